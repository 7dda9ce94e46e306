//! A small RFC 4180 CSV reader, enough for the Bitext training file: comma-separated fields,
//! CRLF or LF record ends, double-quoted fields that may hold commas, newlines and doubled quotes.
//! It reads whole text already in memory; it does not guess dialects.

/// Splits `text` into records of fields. A final empty line is not a record. Errors name the
/// 1-based line where a quoted field was left open or a quote appeared mid-field.
pub(crate) fn parse(text: &str) -> Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    // Whether the current record has any content yet (so a blank trailing line is no record).
    let mut started = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if field.is_empty() => {
                started = true;
                let open_line = line;
                loop {
                    match chars.next() {
                        Some('"') => {
                            if chars.peek() == Some(&'"') {
                                chars.next();
                                field.push('"');
                            } else {
                                break;
                            }
                        }
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            field.push(ch);
                        }
                        None => {
                            return Err(format!(
                                "quoted field opened on line {open_line} never closes"
                            ));
                        }
                    }
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(_) => return Err(format!("text after a closing quote on line {line}")),
                }
            }
            '"' => return Err(format!("quote inside an unquoted field on line {line}")),
            ',' => {
                started = true;
                record.push(std::mem::take(&mut field));
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                line += 1;
                if started || !field.is_empty() {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                started = false;
            }
            other => {
                started = true;
                field.push(other);
            }
        }
    }
    if started || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn plain_quoted_multiline_and_doubled_quotes() {
        let text = "a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\nthere\"\n,,\n";
        let rows = parse(text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], vec!["a", "b", "c"]);
        assert_eq!(rows[1], vec!["1", "x, y", "say \"hi\"\nthere"]);
        assert_eq!(rows[2], vec!["", "", ""]);
    }

    #[test]
    fn no_trailing_newline_and_errors() {
        assert_eq!(parse("a,\"b\"").unwrap(), vec![vec!["a", "b"]]);
        assert!(parse("a,\"b").unwrap_err().contains("line 1"));
        assert!(parse("a,b\"c\n").is_err());
        assert!(parse("\"a\"b\n").is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
