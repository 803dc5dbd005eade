//! Just enough JSON writing for kbox's reports (trace lines, stats, the dashboard's
//! snapshots): strings escaped, everything else is numbers kbox formats itself.

use std::fmt;

/// Text shown as a JSON string (quotes included). Bytes that are not UTF-8 (a guest path
/// may hold any) show as U+FFFD.
pub struct Str<'a>(pub &'a [u8]);

impl fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                        write!(f, "\\u{:04x}", u32::from(c))?;
                    }
                    c => write!(f, "{c}")?,
                }
            }
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::Str;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(Str(b"a\"b\\c\n\x01").to_string(), r#""a\"b\\c\n\u0001""#);
        assert_eq!(Str(b"/tmp/\xff").to_string(), "\"/tmp/\u{fffd}\"");
        assert_eq!(Str("é".as_bytes()).to_string(), "\"é\"");
    }
}
