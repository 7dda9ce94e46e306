//! The request in a message as people write it: a greeting, the question, "Thanks,", a name —
//! or an email's sign-off and signature. The intent is classified on the parts that ask
//! something; greetings and thanks count only when nothing else is said.

use std::borrow::Cow;

use super::{Intent, classify};

/// Closing lines that are never a request (an email's sign-off or its phone's signature).
const SIGN_OFFS: &[&str] = &[
    "best",
    "best regards",
    "best wishes",
    "br",
    "cheers",
    "kind regards",
    "many thanks",
    "regards",
    "sincerely",
    "thank you",
    "thanks",
    "thanks again",
    "thanks in advance",
    "thank you in advance",
    "thx",
    "ty",
    "warm regards",
    "warmly",
    "with thanks",
    "yours",
    "yours sincerely",
    "yours truly",
    "all the best",
    "talk soon",
    "take care",
];

/// The parts of a message: its lines, each cut after a sentence's end.
fn parts(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes = line.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if matches!(b, b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_some_and(u8::is_ascii_whitespace)
            {
                out.push(&line[start..=i]);
                start = i + 1;
            }
        }
        out.push(&line[start..]);
    }
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether a part only closes or signs the message: a sign-off ("Thanks,", "Best regards"),
/// a name ("James", "Mary-Ann O'Neil"), or a phone's signature.
fn is_closing(part: &str) -> bool {
    let plain: String = part
        .trim_end_matches([',', '.', '!', '-', '—'])
        .trim()
        .to_lowercase();
    if SIGN_OFFS.contains(&plain.as_str()) || plain.starts_with("sent from my ") {
        return true;
    }
    // A name on a line of its own: one to three capitalized words, no digits, no question.
    let words: Vec<&str> = part
        .trim_end_matches([',', '.'])
        .split_whitespace()
        .collect();
    !words.is_empty()
        && words.len() <= 3
        && !part.contains('?')
        && words.iter().all(|w| {
            w.chars().next().is_some_and(char::is_uppercase)
                && w.chars()
                    .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        })
}

/// Whether a part is only a pleasantry (a greeting or thanks, and sure of it).
fn is_pleasantry(part: &str) -> bool {
    let c = classify(part);
    matches!(c.intent, Intent::Greeting | Intent::Thanks) && c.confidence >= 0.5
}

/// The text to classify a message's intent on: its parts that ask or say something, without
/// greetings, thanks, sign-offs and names — or the whole message when that is all it is.
pub fn request_text(text: &str) -> Cow<'_, str> {
    let parts = parts(text);
    if parts.len() < 2 {
        return Cow::Borrowed(text);
    }
    let asks: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !is_closing(p) && !is_pleasantry(p))
        .collect();
    if asks.is_empty() || asks.len() == parts.len() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(asks.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_found_among_greetings_thanks_and_a_signature() {
        let email = "Hello,\nCould you tell me where order #W2611340 is?\nThanks,\nJames";
        assert_eq!(
            request_text(email),
            "Could you tell me where order #W2611340 is?"
        );
        assert_eq!(classify(&request_text(email)).intent, Intent::TrackOrder);
        let chat = "Hi! I want to cancel my order #W123. Thank you so much.";
        assert_eq!(request_text(chat), "I want to cancel my order #W123.");
        let signed = "Where is my refund?\n\nBest regards,\nMary-Ann O'Neil\nSent from my iPhone";
        assert_eq!(request_text(signed), "Where is my refund?");
        // Only pleasantries: they are the message.
        assert_eq!(
            request_text("Thanks so much!\nJames"),
            "Thanks so much!\nJames"
        );
        assert_eq!(request_text("hello"), "hello");
        // Nothing to drop.
        let plain = "My parcel is late. Where is it?";
        assert_eq!(request_text(plain), plain);
    }
}
