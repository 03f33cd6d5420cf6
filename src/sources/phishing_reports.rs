//! The reporting mailbox (design §4 "Phishing reports").
