//! JSON encoding that matches Go's `encoding/json` byte for byte where it
//! matters to clients: `<`, `>`, `&`, U+2028 and U+2029 are escaped as
//! `\u003c`, `\u003e`, `\u0026`, `\u2028` and `\u2029`.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, Serializer};

/// A compact formatter with Go's HTML-safe string escaping.
#[derive(Debug, Default, Clone, Copy)]
pub struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc: &[u8] = match c {
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '&' => b"\\u0026",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc)?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // Go writes whole floats without a fraction: 4.0 -> 4.
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e21 {
            #[allow(clippy::cast_possible_truncation)]
            let whole = value as i64;
            return CompactFormatter.write_i64(writer, whole);
        }
        CompactFormatter.write_f64(writer, value)
    }
}

/// Serializes `value` as compact, Go-compatible JSON, appending to `out`.
pub fn write_go_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut ser = Serializer::with_formatter(out, GoFormatter);
    // Serializing our own wire types into a Vec cannot fail.
    value
        .serialize(&mut ser)
        .expect("wire types serialize infallibly");
}

/// Serializes `value` as compact, Go-compatible JSON.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_go_json(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_like_go() {
        let s = to_go_json(&"<a href=\"x\">&\u{2028}</a>\n\u{1b}");
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#""\u003ca href=\"x\"\u003e\u0026\u2028\u003c/a\u003e\n\u001b""#
        );
    }

    #[test]
    fn whole_floats_like_go() {
        assert_eq!(to_go_json(&4.0_f64), b"4");
        assert_eq!(to_go_json(&8192.5_f64), b"8192.5");
    }
}
