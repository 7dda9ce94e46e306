//! Reads the Bitext training file (RFC 4180 CSV) with the `csv` crate: comma-separated fields,
//! CRLF or LF record ends, double-quoted fields that may hold commas, newlines and doubled
//! quotes; records may differ in length. It reads whole text already in memory.

/// Splits `text` into records of fields. Blank lines are not records; a leading byte-order mark
/// is skipped. An error names the line where reading stopped.
pub(crate) fn parse(text: &str) -> Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.position() {
            Some(at) => format!("line {}: {e}", at.line()),
            None => e.to_string(),
        })?;
        records.push(record.iter().map(str::to_string).collect());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn plain_quoted_multiline_and_doubled_quotes() {
        let text = "\u{feff}a,b,c\r\n1,\"x, y\",\"say \"\"hi\"\"\nthere\"\n\n,,\n";
        let rows = parse(text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], vec!["a", "b", "c"]);
        assert_eq!(rows[1], vec!["1", "x, y", "say \"hi\"\nthere"]);
        assert_eq!(rows[2], vec!["", "", ""]);
    }

    #[test]
    fn no_trailing_newline_ragged_records_and_empty_text() {
        assert_eq!(parse("a,\"b\"").unwrap(), vec![vec!["a", "b"]]);
        assert_eq!(
            parse("a,b,c\nd\n").unwrap(),
            vec![vec!["a", "b", "c"], vec!["d"]]
        );
        assert!(parse("").unwrap().is_empty());
    }
}
