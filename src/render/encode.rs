//! The body of an email's text or HTML part, encoded in one pass from the
//! rendered string: `7bit` when it is ASCII in short lines, quoted-printable
//! otherwise, with CRLF line endings. The choice and the bytes are lettre's own
//! (a test holds the two together); lettre would normalise the line endings by
//! inserting into the string, scan it again to choose, and encode a copy of it,
//! once per recipient. Text that is mostly not ASCII (where lettre picks
//! base64) is still encoded by lettre.

use lettre::message::Body;
use lettre::message::header::ContentTransferEncoding;

/// Quoted-printable lines are at most this long, the soft break's `=` included.
const LIMIT: usize = 76;

/// The encoded body of `text`.
pub fn text_body(text: &str) -> Body {
    let bytes = text.as_bytes();
    if text.is_ascii() && !line_too_long(bytes) {
        return Body::dangerous_pre_encoded(crlf(bytes), ContentTransferEncoding::SevenBit);
    }
    if quoted_printable_efficient(bytes) {
        let encoded = quoted_printable(&crlf(bytes));
        return Body::dangerous_pre_encoded(encoded, ContentTransferEncoding::QuotedPrintable);
    }
    Body::new(text.to_owned())
}

/// Whether a line is too long for `7bit`, measured as lettre measures it (on
/// the text before its line endings become CRLF).
fn line_too_long(bytes: &[u8]) -> bool {
    let mut last = 0;
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if i - last >= LIMIT {
            return true;
        }
        last = i;
    }
    bytes.len() - last >= LIMIT
}

/// Whether at most a third of the bytes need escaping (otherwise base64 is shorter).
fn quoted_printable_efficient(bytes: &[u8]) -> bool {
    let escaped = bytes.iter().filter(|b| !matches!(b, b'\t' | b' '..=b'~')).count();
    escaped <= bytes.len() / 3
}

/// `bytes` with each `\n` not after a `\r` made `\r\n`.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
    let mut start = 0;
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        out.extend_from_slice(&bytes[start..i]);
        if i == 0 || bytes[i - 1] != b'\r' {
            out.push(b'\r');
        }
        out.push(b'\n');
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out
}

/// Quoted-printable (RFC 2045, section 6.7) of text whose line breaks are CRLF:
/// they stay line breaks, a lone CR is escaped, a space or tab before a line
/// break is escaped, and lines longer than [`LIMIT`] get a soft break.
fn quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Line {
        out: Vec::with_capacity(input.len() + input.len() / 8 + 16),
        on_line: 0,
        last: 0,
    };
    let mut was_cr = false;
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        i += 1;
        if was_cr {
            was_cr = false;
            if byte == b'\n' {
                out.escape_trailing_blank();
                out.out.extend_from_slice(b"\r\n");
                out.on_line = 0;
                continue;
            }
            out.append(b"=0D");
        }
        if byte == b'\r' {
            was_cr = true;
            continue;
        }
        if LIMIT.saturating_sub(out.on_line) >= 3 && !needs_escaping(byte) {
            // A run of plain bytes that fits on the line, the room for a soft break kept.
            let room = LIMIT - out.on_line - 2;
            let start = i - 1;
            let run = input[start..]
                .iter()
                .take(room)
                .position(|&b| needs_escaping(b))
                .unwrap_or_else(|| room.min(input.len() - start));
            out.out.extend_from_slice(&input[start..start + run]);
            out.on_line += run;
            out.last = out.out.len();
            i = start + run;
            continue;
        }
        match byte {
            b'=' => out.append(b"=3D"),
            b'\t' | b' '..=b'~' => out.append(&[byte]),
            _ => out.append(&escaped(byte)),
        }
    }
    if was_cr {
        out.append(b"=0D");
    } else {
        out.escape_trailing_blank();
    }
    out.out
}

/// The output being written, where its current line is.
struct Line {
    out: Vec<u8>,
    /// Bytes on the current output line.
    on_line: usize,
    /// Where the last piece appended starts: a soft break may go in front of it.
    last: usize,
}

impl Line {
    /// Appends one piece (a byte or an escape, never split), breaking the line first if it would not fit.
    fn append(&mut self, piece: &[u8]) {
        if self.on_line + piece.len() > LIMIT {
            if self.on_line == LIMIT {
                // No room left for the `=`: the break goes before the last piece.
                self.on_line = self.out.len() - self.last;
                self.out.splice(self.last..self.last, *b"=\r\n");
            } else {
                self.out.extend_from_slice(b"=\r\n");
                self.on_line = 0;
            }
        }
        self.out.extend_from_slice(piece);
        self.on_line += piece.len();
        self.last = self.out.len() - piece.len();
    }

    /// A space or tab may not end an encoded line: it is written escaped.
    fn escape_trailing_blank(&mut self) {
        let escape: &[u8] = match self.out.last() {
            Some(b' ') => b"=20",
            Some(b'\t') => b"=09",
            _ => return,
        };
        self.out.pop();
        self.on_line -= 1;
        self.append(escape);
    }
}

fn needs_escaping(byte: u8) -> bool {
    !matches!(byte, b'\t' | b' '..=b'<' | b'>'..=b'~')
}

fn escaped(byte: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'=', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What lettre makes of `text`: its encoding and bytes.
    fn lettre(text: &str) -> (ContentTransferEncoding, Vec<u8>) {
        let body = Body::new(text.to_owned());
        (body.encoding(), body.into_vec())
    }

    fn ours(text: &str) -> (ContentTransferEncoding, Vec<u8>) {
        let body = text_body(text);
        (body.encoding(), body.into_vec())
    }

    #[test]
    fn short_ascii_lines_stay_7bit_with_crlf() {
        let (encoding, bytes) = ours("Hello Ana,\n\nA lead is waiting.\r\n");
        assert_eq!(encoding, ContentTransferEncoding::SevenBit);
        assert_eq!(bytes, b"Hello Ana,\r\n\r\nA lead is waiting.\r\n");
    }

    #[test]
    fn long_lines_accents_and_equals_signs_are_quoted_printable() {
        let text = format!("Zoë = partner\n{}\nend \n", "x".repeat(100));
        let (encoding, bytes) = ours(&text);
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        let bytes = String::from_utf8(bytes).unwrap();
        assert!(bytes.starts_with("Zo=C3=AB =3D partner\r\n"), "{bytes}");
        assert!(bytes.lines().all(|l| l.len() <= LIMIT), "{bytes}");
        assert!(bytes.ends_with("end=20\r\n"), "a trailing space is escaped: {bytes}");
        assert_eq!(
            bytes.matches("=\r\n").count(),
            1,
            "one soft break in the long line: {bytes}"
        );
    }

    #[test]
    fn the_same_bytes_as_lettre_on_edge_cases() {
        let cases = [
            String::new(),
            "\n".into(),
            "\r".into(),
            "a\rb\r\n".into(),
            "x".repeat(75),
            "x".repeat(76),
            format!("a\n{}", "y".repeat(74)),
            format!("a\n{}", "y".repeat(75)),
            format!("{}=", "z".repeat(75)),
            format!("{}é", "z".repeat(74)),
            format!("{} \n", "z".repeat(75)),
            format!("{}\t", "z".repeat(76)),
            "日本語のテキスト".into(),
            "<p style=\"color:#333\">Bonjour Zoë</p>\n".repeat(20),
        ];
        for text in cases {
            assert_eq!(ours(&text), lettre(&text), "{text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_same_bytes_as_lettre(pieces in prop::collection::vec(
            prop::sample::select(vec![
                "a", "Lead ", " ", "\t", "=", "\r", "\n", "\r\n", "é", "€", ".", "<td>",
                "0123456789012345678901234567890123456789",
            ]),
            0..120,
        )) {
            let text: String = pieces.concat();
            prop_assert_eq!(ours(&text), lettre(&text));
        }
    }
}
