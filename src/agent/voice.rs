//! The brand's voice: `brand/voice.toml` (greeting, sign-off, tone, preferred terms, banned
//! phrases) and the handlebars templates every reply is rendered through —
//! `prompts/replies/*.hbs` (what the offline resolver says), `prompts/*.hbs` (the LLM's system
//! prompt) and `channels/*.hbs` (how a channel wraps a reply). A brand changes wording here
//! without touching Rust. This module renders; it does not decide what to say.

use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voice {
    pub name: String,
    pub greeting: String,
    pub sign_off: String,
    #[serde(default)]
    pub tone: String,
    #[serde(default)]
    pub support_email: String,
    #[serde(default)]
    pub support_hours: String,
    /// Word a shopper might see → the word the brand prefers.
    #[serde(default)]
    pub preferred_terms: toml::Table,
    #[serde(default)]
    pub banned_phrases: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
}

impl Voice {
    pub fn load(path: &Path) -> Result<Voice, VoiceError> {
        let text = std::fs::read_to_string(path).map_err(|source| VoiceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let voice: Voice = toml::from_str(&text).map_err(|e| VoiceError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for (k, v) in &voice.preferred_terms {
            if !v.is_str() {
                return Err(VoiceError::Parse {
                    path: path.to_path_buf(),
                    message: format!("preferred_terms.{k:?} must be a string"),
                });
            }
        }
        Ok(voice)
    }

    /// Applies the preferred terms (whole words, case-insensitive, keeping a leading capital)
    /// and drops any sentence that carries a banned phrase.
    pub fn polish(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (from, to) in &self.preferred_terms {
            if let Some(to) = to.as_str()
                && !from.eq_ignore_ascii_case(to)
            {
                out = replace_words(&out, from, to);
            }
        }
        if self.banned_phrases.is_empty() {
            return out;
        }
        out.split_inclusive(['.', '!', '?', '\n'])
            .filter(|sentence| {
                let lower = sentence.to_lowercase();
                !self
                    .banned_phrases
                    .iter()
                    .any(|b| !b.is_empty() && lower.contains(&b.to_lowercase()))
            })
            .collect::<String>()
    }

    /// The banned phrases a text contains (for tests and the LLM guard).
    pub fn banned_in(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        self.banned_phrases
            .iter()
            .filter(|b| !b.is_empty() && lower.contains(&b.to_lowercase()))
            .cloned()
            .collect()
    }
}

/// Replaces whole-word occurrences of `from` (case-insensitive) by `to`, capitalizing `to` where
/// `from` started with a capital.
fn replace_words(text: &str, from: &str, to: &str) -> String {
    let lower = text.to_lowercase();
    let needle = from.to_lowercase();
    if needle.is_empty() || lower.len() != text.len() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(pos) = lower[i..].find(&needle) {
        let start = i + pos;
        let end = start + needle.len();
        let before_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after_ok = text[end..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        out.push_str(&text[i..start]);
        if before_ok && after_ok {
            let starts_upper = text[start..].chars().next().is_some_and(char::is_uppercase);
            if starts_upper {
                let mut cs = to.chars();
                if let Some(first) = cs.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(cs.as_str());
                }
            } else {
                out.push_str(to);
            }
        } else {
            out.push_str(&text[start..end]);
        }
        i = end;
    }
    out.push_str(&text[i..]);
    out
}

/// The brand's templates, loaded once at start. Plain-text templates are not HTML-escaped;
/// channels that produce HTML (email) escape in their own registry.
pub struct Templates {
    hbs: Handlebars<'static>,
    /// `channels/*.html.hbs`, HTML-escaped.
    html: Handlebars<'static>,
}

impl Templates {
    /// Loads `prompts/replies/*.hbs` as `reply/<name>`, `prompts/*.hbs` as `prompt/<name>` and
    /// `channels/*.hbs` as `channel/<name>`. A template that does not parse is an error naming
    /// the file.
    pub fn load(prompts_dir: &Path, channels_dir: &Path) -> Result<Templates, VoiceError> {
        let mut hbs = Handlebars::new();
        hbs.set_strict_mode(true);
        hbs.register_escape_fn(handlebars::no_escape);
        register_dir(&mut hbs, &prompts_dir.join("replies"), "reply/", false)?;
        register_dir(&mut hbs, prompts_dir, "prompt/", false)?;
        register_dir(&mut hbs, channels_dir, "channel/", false)?;
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        register_dir(&mut html, channels_dir, "channel/", true)?;
        Ok(Templates { hbs, html })
    }

    pub fn has(&self, name: &str) -> bool {
        self.hbs.has_template(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hbs.get_templates().keys().cloned().collect();
        v.sort();
        v
    }

    /// Renders an HTML template (`channels/<name>.html.hbs`, escaped) with some data.
    pub fn render_html(&self, name: &str, data: &Value) -> Result<String, VoiceError> {
        self.html
            .render(name, data)
            .map_err(|e| VoiceError::Render {
                name: format!("{name}.html"),
                message: e.to_string(),
            })
    }

    /// Renders a template with some data.
    pub fn render(&self, name: &str, data: &Value) -> Result<String, VoiceError> {
        self.hbs.render(name, data).map_err(|e| VoiceError::Render {
            name: name.to_string(),
            message: e.to_string(),
        })
    }
}

/// Registers `dir/*.hbs` (or, with `html`, only `dir/*.html.hbs`) under `prefix` + stem.
fn register_dir(
    hbs: &mut Handlebars<'static>,
    dir: &Path,
    prefix: &str,
    html: bool,
) -> Result<(), VoiceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(VoiceError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hbs") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let (stem, is_html) = match stem.strip_suffix(".html") {
            Some(s) => (s, true),
            None => (stem, false),
        };
        if is_html != html {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| VoiceError::Read {
            path: path.clone(),
            source,
        })?;
        // Templates end with a newline in the file; replies should not.
        let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
        hbs.register_template_string(&format!("{prefix}{stem}"), text)
            .map_err(|e| VoiceError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> Voice {
        Voice::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/brand/voice.toml"
        )))
        .expect("brand/voice.toml loads")
    }

    #[test]
    fn preferred_terms_replace_whole_words_only() {
        let v = voice();
        assert_eq!(
            v.polish("Your ticket is open. Ticketing is fine."),
            "Your request is open. Ticketing is fine."
        );
        assert_eq!(
            v.polish("That colour is out of stock."),
            "That colour is sold out."
        );
        assert_eq!(v.polish("Store credit works too."), "Gift card works too.");
    }

    #[test]
    fn banned_phrases_are_dropped() {
        let v = voice();
        let text = "Your order has shipped. We apologize for any inconvenience. It arrives Friday.";
        let out = v.polish(text);
        assert!(!out.to_lowercase().contains("inconvenience"), "{out}");
        assert!(out.contains("It arrives Friday."), "{out}");
        assert_eq!(
            v.banned_in("As per our policy, no."),
            vec!["as per our policy"]
        );
    }
}
