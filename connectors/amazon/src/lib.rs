//! Amazon buyer-seller messages, read from the seller's mailbox.
