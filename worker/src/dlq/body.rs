//! How a dead letter's body is shown to people: whole when it is printable text,
//! escaped otherwise, and cut to fit a table cell.

/// A body as text: itself when it is printable UTF-8, otherwise escaped (`\xNN`,
/// `\n`, …) so nothing is hidden or mangled.
pub(super) fn printable(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => body.escape_ascii().to_string(),
    }
}

/// Longest reason and body shown in a table cell.
pub(super) const REASON_WIDTH: usize = 48;
pub(super) const BODY_WIDTH: usize = 64;

/// `text`, cut to `width` characters with an ellipsis when longer.
pub(super) fn truncated(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::{printable, truncated};

    #[test]
    fn a_body_is_shown_as_is_when_printable_and_escaped_otherwise() {
        assert_eq!(printable(br#"{"v":1}"#), r#"{"v":1}"#);
        assert_eq!(printable(b"a\nb\xff"), r"a\nb\xff");
    }

    #[test]
    fn text_longer_than_its_cell_is_cut_with_an_ellipsis() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcd", 3), "ab…");
        assert_eq!(
            truncated("ééééé", 4),
            "ééé…",
            "counted in characters, not bytes"
        );
    }
}
