-- When the send of a claimed reply was started (the request about to go
-- out), for platforms whose own record cannot prove a reply absent (SMTP:
-- the Sent copy is filed after the send). A reply recovered after a crash
-- without this mark never reached the platform and is sent. With it, the
-- platform is asked, and a reply it cannot find is uncertain, not resent.
ALTER TABLE outbox ADD COLUMN send_started_at BIGINT
