//! An error and its sources on one line, for logs, events and conditions.

/// `err` and its `source()` chain joined with ": " ("a: b: c"). A source whose text the line
/// already ends with is not repeated (some errors print their source in their own message).
#[must_use]
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(text: &'static str, source: Option<E>) -> E {
        E { text, source: source.map(Box::new) }
    }

    #[test]
    fn joins_sources_once() {
        assert_eq!(chain(&e("a", None)), "a");
        assert_eq!(chain(&e("a", Some(e("b", Some(e("c", None)))))), "a: b: c");
        // "b" already printed its source "c".
        assert_eq!(chain(&e("a", Some(e("b: c", Some(e("c", None)))))), "a: b: c");
    }
}
