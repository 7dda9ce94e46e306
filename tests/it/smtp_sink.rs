//! The SMTP sink the crash drill uses, shared with the tests that check outgoing mail.

pub use concierge::drill::smtp_sink::{Received, SmtpSink};
