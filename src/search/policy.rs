//! Splitting the brand's markdown policy files into searchable sections.
//!
//! Pure text handling: no index, no database. Each section keeps its heading path (document title
//! first) so a hit can say where it came from.

use std::collections::HashMap;
use std::path::Path;

/// One section of a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChunk {
    /// "returns.md#return-window": the file name and the slug of the section's own heading.
    pub id: String,
    /// The file the section came from ("returns.md").
    pub file: String,
    /// The heading path, document title first: "Returns & Exchanges › Return window".
    pub heading: String,
    /// The section's text (markdown) without its heading line.
    pub text: String,
}

/// Joins heading levels in [`PolicyChunk::heading`].
pub const HEADING_SEPARATOR: &str = " › ";

/// Splits a markdown policy file into sections by `#`/`##`/`###` headings, keeping the heading
/// (and the document title) with each chunk; text before the first heading is its own chunk
/// under the title.
///
/// The title is the first `#` heading when the file starts with one, else it is made from the
/// file name ("shipping-policy.md" → "Shipping policy"). Headings inside fenced code blocks and
/// deeper headings (`####`…) stay part of the text. Sections without text are skipped (their
/// heading still shows in their subsections' heading path).
pub fn chunk_policy(file_name: &str, markdown: &str) -> Vec<PolicyChunk> {
    struct Section {
        level: usize,
        heading: Option<String>,
        lines: Vec<String>,
    }

    let mut sections: Vec<Section> = vec![Section {
        level: 0,
        heading: None,
        lines: Vec::new(),
    }];
    let mut fence: Option<&str> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
        } else if trimmed.starts_with("```") {
            fence = Some("```");
        } else if trimmed.starts_with("~~~") {
            fence = Some("~~~");
        } else if let Some((level, text)) = parse_heading(line) {
            sections.push(Section {
                level,
                heading: Some(text),
                lines: Vec::new(),
            });
            continue;
        }
        if let Some(last) = sections.last_mut() {
            last.lines.push(line.to_string());
        }
    }

    // The title: a leading `#` heading (only blank text before it), else the file name.
    let leading_h1 = sections.len() > 1
        && sections[1].level == 1
        && sections[0].lines.iter().all(|l| l.trim().is_empty());
    let title = if leading_h1 {
        sections[1].heading.clone().unwrap_or_default()
    } else {
        title_from_file_name(file_name)
    };

    let mut chunks = Vec::new();
    let mut used_slugs: HashMap<String, usize> = HashMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let is_title_section = i == 0 || (leading_h1 && i == 1);
        let own = match (&section.heading, is_title_section) {
            (Some(h), false) => {
                while stack.last().is_some_and(|(l, _)| *l >= section.level) {
                    stack.pop();
                }
                stack.push((section.level, h.clone()));
                h.clone()
            }
            _ => title.clone(),
        };
        let text = section.lines.join("\n").trim().to_string();
        if text.is_empty() {
            continue;
        }
        let mut path = vec![title.clone()];
        if !is_title_section {
            path.extend(stack.iter().map(|(_, h)| h.clone()));
        }
        let base = match slug(&own) {
            s if s.is_empty() => "section".to_string(),
            s => s,
        };
        let n = used_slugs.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        chunks.push(PolicyChunk {
            id: format!("{file_name}#{anchor}"),
            file: file_name.to_string(),
            heading: path.join(HEADING_SEPARATOR),
            text,
        });
    }
    chunks
}

/// Reads every `*.md` file of a directory (the brand's `policies/`), sorted by file name, and
/// chunks each with [`chunk_policy`]. A missing directory means the brand has no policy texts:
/// an empty list, not an error. Unreadable files are errors naming the file.
pub fn load_policy_dir(dir: &Path) -> std::io::Result<Vec<PolicyChunk>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", dir.display()),
            ));
        }
    };
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let is_md = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("md"));
        if !is_md || !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push((name, path));
    }
    files.sort();
    let mut chunks = Vec::new();
    for (name, path) in files {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
        })?;
        chunks.extend(chunk_policy(&name, &text));
    }
    Ok(chunks)
}

/// `#`, `##` or `###` followed by a space (or nothing), up to three spaces of indent.
fn parse_heading(line: &str) -> Option<(usize, String)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.len() - rest.trim_start_matches('#').len();
    if !(1..=3).contains(&level) {
        return None;
    }
    let after = &rest[level..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    // Closing hashes ("## Title ##") are decoration.
    let text = after.trim();
    let text = match text.trim_end_matches('#') {
        t if t.is_empty() || t.ends_with(' ') => t.trim_end(),
        _ => text,
    };
    Some((level, text.to_string()))
}

/// "shipping-policy.md" → "Shipping policy".
fn title_from_file_name(file_name: &str) -> String {
    let stem = Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name);
    let words = stem.replace(['-', '_'], " ");
    let words = words.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Policy".to_string(),
    }
}

/// A URL fragment for a heading: lower case, alphanumerics kept, runs of anything else → '-'.
fn slug(heading: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in heading.chars() {
        if c.is_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.extend(c.to_lowercase());
        } else {
            dash = true;
        }
    }
    out
}
