//! The store story: the same domain operations, run against SQLite and
//! against a real PostgreSQL cluster started for the test.

use chrono::{Duration, Utc};
use hourglass::clock::{self, Policy, Status};
use hourglass::customers::CustomerRef;
use hourglass::store::{Clocking, NewReply, OutboxOutcome, SqlStore, Store, ThreadFilter};
use hourglass_connector::{Batch, CustomerIdentity, Direction, Message, Quarantined};

fn clocking() -> Clocking {
    Clocking {
        channel: "amazon".into(),
        policy: Policy::wall_clock(Duration::hours(24)),
        points: clock::thresholds(&[
            std::time::Duration::from_secs(6 * 3600),
            std::time::Duration::from_secs(3600),
        ]),
    }
}

fn buyer_message(id: &str, thread: &str, hours_ago: i64, name: &str) -> Message {
    let mut m = Message::new(
        id,
        thread,
        Direction::Inbound,
        Utc::now() - Duration::hours(hours_ago),
        format!("Where is my parcel? ({id})"),
    );
    m.customer = Some(CustomerIdentity {
        channel: "amazon".into(),
        handle: format!("{thread}@marketplace.amazon.de"),
        display_name: Some(name.into()),
        email: None,
    });
    m.author = Some(name.into());
    m.subject = Some(format!("Inquiry from Amazon customer {name}"));
    m.order_id = Some("302-1234567-7654321".into());
    m.marketplace = Some("amazon.de".into());
    m
}

async fn story(store: &dyn Store) {
    let c = clocking();
    store.migrate().await.unwrap();
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "migrate is idempotent"
    );
    store
        .register_instance("amazon-eu", "amazon", "amazon")
        .await
        .unwrap();

    // Ingest: three threads, one answered elsewhere, one quarantined item.
    let mut batch = Batch::default();
    batch
        .messages
        .push(buyer_message("m1", "anna", 20, "Anna Schmidt"));
    batch
        .messages
        .push(buyer_message("m2", "bruno", 2, "Bruno Costa"));
    batch
        .messages
        .push(buyer_message("m3", "chloe", 5, "Chloé Martin"));
    let mut reply = Message::new(
        "m4",
        "chloe",
        Direction::Outbound,
        Utc::now() - Duration::hours(4),
        "Sent today.",
    );
    reply.author = Some("Seller".into());
    batch.messages.push(reply);
    batch.quarantined.push(Quarantined {
        external_id: Some("uid-9".into()),
        source: "INBOX".into(),
        error: "no header section".into(),
        raw: b"\x00\xffgarbage".to_vec(),
    });
    batch.cursors.insert("INBOX".into(), "1:4".into());
    let r = store.ingest("amazon-eu", &batch, &c).await.unwrap();
    assert_eq!((r.inserted, r.duplicates, r.quarantined), (4, 0, 1));

    // Re-ingest the same batch: no duplicates, cursor unchanged.
    batch.quarantined.clear();
    let r = store.ingest("amazon-eu", &batch, &c).await.unwrap();
    assert_eq!((r.inserted, r.duplicates), (0, 4));
    let cursors = store.cursors("amazon-eu").await.unwrap();
    assert_eq!(cursors.get("INBOX").map(String::as_str), Some("1:4"));

    // Threads by deadline: Anna (4h left) before Bruno (22h left); Chloé answered.
    let now = Utc::now();
    let all = store.threads(&ThreadFilter::default(), now).await.unwrap();
    let names: Vec<_> = all.iter().map(|t| t.customer.clone().unwrap()).collect();
    assert_eq!(names, ["Anna Schmidt", "Bruno Costa", "Chloé Martin"]);
    assert_eq!(all[0].status, Status::Awaiting);
    assert_eq!(all[2].status, Status::Answered);
    assert_eq!(all[0].message_count, 1);
    assert_eq!(all[0].order_id.as_deref(), Some("302-1234567-7654321"));
    let due = all[0].due_at.unwrap();
    let expected = batch.messages[0].sent_at + Duration::hours(24);
    assert!(
        (due - expected).num_milliseconds().abs() < 2,
        "{due} vs {expected}"
    );
    let soon = ThreadFilter {
        due_within: Some(std::time::Duration::from_secs(6 * 3600)),
        ..ThreadFilter::default()
    };
    let soon = store.threads(&soon, now).await.unwrap();
    assert_eq!(soon.len(), 1);
    assert_eq!(soon[0].customer.as_deref(), Some("Anna Schmidt"));

    // The 6h alert point of Anna's thread has passed: it is a candidate.
    let candidates = store.alert_candidates(now, 10).await.unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].thread.id, all[0].id);

    // Outbox: enqueue, claim once (a second claim gets nothing), complete.
    let anna = all[0].id;
    store
        .enqueue_reply(&NewReply {
            id: "reply-1".into(),
            thread_id: anna,
            body: "Your parcel left our warehouse today.".into(),
            template: None,
            created_by: "agent".into(),
        })
        .await
        .unwrap();
    let now = Utc::now();
    let claimed = store
        .claim_outbox("w1", std::time::Duration::from_secs(60), 10, now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].previous_state, "queued");
    let again = store
        .claim_outbox("w2", std::time::Duration::from_secs(60), 10, now)
        .await
        .unwrap();
    assert!(again.is_empty(), "a claimed reply is not handed out twice");
    // A worker that died: its lease runs out and the item comes back as
    // `sending`, so the next worker knows the outcome is unknown.
    let later = now + Duration::minutes(5);
    let reclaimed = store
        .claim_outbox("w3", std::time::Duration::from_secs(60), 10, later)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].previous_state, "sending");
    store
        .complete_outbox(
            "reply-1",
            &OutboxOutcome::Sent {
                external_id: "out-1".into(),
                sent_at: Utc::now(),
            },
            &c,
        )
        .await
        .unwrap();
    let detail = store.thread(anna, Utc::now()).await.unwrap().unwrap();
    assert_eq!(detail.thread.status, Status::Answered);
    assert_eq!(detail.messages.len(), 2);
    assert_eq!(detail.messages[1].direction, "outbound");
    assert_eq!(detail.outbox[0].state, "sent");

    // Marks are recorded with who did them.
    let bruno = all[1].id;
    store
        .snooze(
            bruno,
            Utc::now() + Duration::hours(2),
            "ines",
            &c,
            Utc::now(),
        )
        .await
        .unwrap();
    let detail = store.thread(bruno, Utc::now()).await.unwrap().unwrap();
    assert_eq!(detail.thread.status, Status::Snoozed);
    assert_eq!(detail.audit[0].actor, "ines");
    store
        .mark_no_response_needed(bruno, "ines", &c, Utc::now())
        .await
        .unwrap();
    let detail = store.thread(bruno, Utc::now()).await.unwrap().unwrap();
    assert_eq!(detail.thread.status, Status::NoResponseNeeded);

    // Quarantine keeps the raw bytes.
    let q = store.quarantine(Some("amazon-eu")).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        store.quarantine_raw(q[0].id).await.unwrap().unwrap(),
        b"\x00\xffgarbage"
    );

    // A customer's other threads: Anna writes again about another order,
    // from the same relay address; Bruno is someone else.
    let mut again = buyer_message("m9", "anna-2", 1, "Anna Schmidt");
    if let Some(c) = again.customer.as_mut() {
        c.handle = "anna@marketplace.amazon.de".into();
    }
    again.order_id = Some("302-7654321-1234567".into());
    let mut batch = Batch::default();
    batch.messages.push(again);
    store.ingest("amazon-eu", &batch, &c).await.unwrap();
    let related = store.customer_threads(anna, Utc::now()).await.unwrap();
    assert_eq!(related.len(), 1, "{related:?}");
    assert_ne!(related[0].id, anna);
    assert_eq!(related[0].order_id.as_deref(), Some("302-7654321-1234567"));
    let back = store
        .customer_threads(related[0].id, Utc::now())
        .await
        .unwrap();
    assert_eq!(back.iter().map(|t| t.id).collect::<Vec<_>>(), vec![anna]);
    assert!(store
        .customer_threads(bruno, Utc::now())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .customer_threads(999_999, Utc::now())
        .await
        .unwrap()
        .is_empty());

    // One customer across channels: Anna e-mails about her second order
    // and becomes one customer with her Amazon identity. Bruno and Chloé
    // share an order id with Anna in this story, but two Amazon buyers
    // are never joined automatically.
    let anna_mail = |id: &str| {
        let mut m = Message::new(
            id,
            format!("mail-{id}"),
            Direction::Inbound,
            Utc::now(),
            "Hi",
        );
        m.customer = Some(CustomerIdentity {
            channel: "email".into(),
            handle: "anna.schmidt@example.de".into(),
            display_name: Some("Anna Schmidt".into()),
            email: Some("Anna.Schmidt@example.de".into()),
        });
        m.order_id = Some("302-7654321-1234567".into());
        m
    };
    let mail_clock = Clocking {
        channel: "email".into(),
        ..clocking()
    };
    let ingest_mail = |id: &'static str| {
        let mut b = Batch::default();
        b.messages.push(anna_mail(id));
        b
    };
    store
        .ingest("shop-mail", &ingest_mail("e1"), &mail_clock)
        .await
        .unwrap();
    let mine = CustomerRef::Thread(anna);
    let joined = store.customer(&mine, Utc::now()).await.unwrap().unwrap();
    let channels: Vec<_> = joined.threads.iter().map(|t| t.channel.as_str()).collect();
    assert_eq!(channels.len(), 3, "{joined:?}");
    assert!(channels.contains(&"email"), "{joined:?}");
    let mail_thread = joined
        .threads
        .iter()
        .find(|t| t.channel == "email")
        .unwrap()
        .id;
    let bruno_c = store
        .customer(&CustomerRef::Thread(bruno), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(bruno_c.id, joined.id);

    // Split by an agent; the next e-mail about the order does not rejoin.
    let theirs = CustomerRef::Thread(mail_thread);
    let split = store
        .unlink_customers(&mine, Some(&theirs), "ines")
        .await
        .unwrap();
    store
        .ingest("shop-mail", &ingest_mail("e2"), &mail_clock)
        .await
        .unwrap();
    let apart = store.customer(&theirs, Utc::now()).await.unwrap().unwrap();
    assert_eq!(apart.id, split);
    assert_eq!(apart.splits.len(), 1, "{apart:?}");
    assert_eq!(apart.splits[0].actor, "ines");
    assert_ne!(
        store.customer(&mine, Utc::now()).await.unwrap().unwrap().id,
        split
    );
    // Linked again by hand.
    let kept = store.link_customers(&mine, &theirs, "ines").await.unwrap();
    let again = store.customer(&theirs, Utc::now()).await.unwrap().unwrap();
    assert_eq!(again.id, kept);
    assert!(again.splits.is_empty());
    assert!(matches!(
        store.unlink_customers(&mine, Some(&mine), "ines").await,
        Err(hourglass::store::StoreError::Invalid(_))
    ));

    // Amazon reports the reply of Anna's thread undelivered; the notice
    // names the order and returns our mail. The reply stays, no longer
    // an answer: the clock runs again from her message.
    let mut notice = Message::new(
        "df-1",
        "amazon-order:302-1234567-7654321",
        Direction::System,
        Utc::now(),
        "Delivery failure: Links are not allowed.",
    );
    notice.order_id = Some("302-1234567-7654321".into());
    notice.meta = serde_json::json!({
        "delivery_failure": "Links are not allowed.",
        "original_message_id": "<out-1>",
    });
    let mut batch = Batch::default();
    batch.messages.push(notice);
    store.ingest("amazon-eu", &batch, &c).await.unwrap();
    let detail = store.thread(anna, Utc::now()).await.unwrap().unwrap();
    assert_eq!(detail.thread.status, Status::Awaiting, "{detail:?}");
    assert_eq!(detail.thread.due_at, Some(due));
    assert_eq!(detail.messages.len(), 3);
    assert!(detail.messages[1].delivery_failed_at.is_some());
    assert_eq!(detail.outbox[0].state, "failed");
    let error = detail.thread.last_error.unwrap();
    assert!(error.starts_with("Your reply of "), "{error}");
    // Nor does `stats` count it as a response.
    let samples = store
        .response_samples(Utc::now() - Duration::days(2))
        .await
        .unwrap();
    let anna_asked = detail.messages[0].sent_at;
    let sample = samples
        .iter()
        .find(|s| (s.inbound_at - anna_asked).num_milliseconds().abs() < 2)
        .unwrap();
    assert_eq!(sample.first_response_at, None, "{sample:?}");
    assert!(
        error.ends_with("could not be delivered: Links are not allowed."),
        "{error}"
    );
    // Taking a thread: the first taker keeps it for the cycle.
    let now = Utc::now();
    let open = store.threads(&ThreadFilter::default(), now).await.unwrap();
    let awaiting = open.iter().find(|t| t.awaiting_since.is_some()).unwrap().id;
    let answered = open.iter().find(|t| t.awaiting_since.is_none()).unwrap().id;
    let nothing = store.take_thread(answered, "ana", now).await.unwrap();
    assert!(nothing.is_none(), "an answered thread cannot be taken");
    let bruno = awaiting;
    let taken = store.take_thread(bruno, "ana", now).await.unwrap();
    assert_eq!(taken.map(|t| t.by).as_deref(), Some("ana"));
    let again = store.take_thread(bruno, "bob", now).await.unwrap();
    assert_eq!(again.map(|t| t.by).as_deref(), Some("ana"));
    assert_eq!(
        store.taken(bruno).await.unwrap().map(|t| t.by).as_deref(),
        Some("ana")
    );
    let listed = store.threads(&ThreadFilter::default(), now).await.unwrap();
    let b = listed.iter().find(|t| t.id == bruno).unwrap();
    assert_eq!(b.taken_by.as_deref(), Some("ana"));

    // The watchdog's reads: first and last arrival, and counts per hour.
    let arrivals = store.arrivals("amazon-eu").await.unwrap();
    let (first, last) = (arrivals.first.unwrap(), arrivals.last.unwrap());
    assert!(first < last, "{arrivals:?}");
    let per_hour = store
        .arrivals_per_hour("amazon-eu", now - Duration::days(28))
        .await
        .unwrap();
    assert!(per_hour.len() >= 3, "{per_hour:?}");
    assert!(per_hour
        .iter()
        .all(|(h, n)| *n > 0 && h * 3_600_000 <= now.timestamp_millis()));

    // A silence alerts once; held by quiet hours, it is claimed only when
    // they end, marked as held.
    let held = vec![hourglass::store::NewDelivery {
        sink: "admin".into(),
        payload: serde_json::json!({ "kind": "silence" }),
        held_until: Some(now + Duration::hours(1)),
    }];
    let raised = store.raise_silence_alert("amazon-eu", last, &held, now);
    assert_eq!(raised.await.unwrap(), Some(1));
    let raised = store.raise_silence_alert("amazon-eu", last, &held, now);
    assert_eq!(raised.await.unwrap(), None, "once per silence");
    let lease = std::time::Duration::from_secs(60);
    let early = store.claim_alert_deliveries(100, lease, now).await.unwrap();
    assert!(
        early
            .iter()
            .all(|d| d.kind != hourglass::store::DeliveryKind::Instance),
        "{early:?}"
    );
    let later = now + Duration::hours(2);
    let due = store
        .claim_alert_deliveries(100, lease, later)
        .await
        .unwrap();
    let held: Vec<_> = due
        .iter()
        .filter(|d| d.kind == hourglass::store::DeliveryKind::Instance)
        .collect();
    assert_eq!(held.len(), 1, "{due:?}");
    assert_eq!(held[0].threshold, "silence");
    assert!(held[0].held_until.is_some());
}

#[tokio::test]
async fn store_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/hourglass.db", dir.path().display());
    let store = SqlStore::connect(&url, None, 4).await.unwrap();
    story(&store).await;
}

#[tokio::test]
async fn store_story_on_postgres() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("story").unwrap();
    let store = SqlStore::connect(&url, None, 4).await.unwrap();
    story(&store).await;
    store.close().await;
}
