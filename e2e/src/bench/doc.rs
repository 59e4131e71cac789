//! Sections of `docs/benchmarks.md` that a run rewrites on their own, between HTML-comment
//! markers, keeping everything else of the file.

/// A marked section of the report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marked {
    pub(crate) begin: &'static str,
    pub(crate) end: &'static str,
}

impl Marked {
    /// `text` with this section replaced by `section` (which starts with `begin` and ends with
    /// `end` and a newline), or with `section` appended after a blank line. Whatever followed
    /// the old section stays a blank line away.
    pub(crate) fn splice(&self, text: &str, section: &str) -> String {
        if let (Some(b), Some(e)) = (text.find(self.begin), text.find(self.end))
            && b < e
        {
            let mut out = text[..b].to_owned();
            out += section;
            let tail = text[e + self.end.len()..].trim_start_matches('\n');
            if !tail.is_empty() {
                out += "\n";
                out += tail;
            }
            return out;
        }
        let mut out = text.trim_end().to_owned();
        if !out.is_empty() {
            out += "\n\n";
        }
        out += section;
        out
    }

    /// The current section in `text`, markers included, if any.
    pub(crate) fn existing<'t>(&self, text: &'t str) -> Option<&'t str> {
        let b = text.find(self.begin)?;
        let e = text.find(self.end)?;
        (b < e).then(|| &text[b..e + self.end.len()])
    }

    /// Puts `section` into `text` when there is one, else keeps the section `old` had.
    pub(crate) fn update(&self, text: &str, section: Option<String>, old: &str) -> String {
        match section.or_else(|| self.existing(old).map(|kept| format!("{kept}\n"))) {
            Some(s) => self.splice(text, &s),
            None => text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Marked = Marked { begin: "<!-- b -->", end: "<!-- e -->" };

    #[test]
    fn splices_between_markers_and_keeps_the_gap() {
        let a = M.splice("# T\n\nbody\n", "<!-- b -->\nx\n<!-- e -->\n");
        assert_eq!(a, "# T\n\nbody\n\n<!-- b -->\nx\n<!-- e -->\n");
        let b = M.splice(&(a.clone() + "\ntail\n"), "<!-- b -->\ny\n<!-- e -->\n");
        assert_eq!(b, "# T\n\nbody\n\n<!-- b -->\ny\n<!-- e -->\n\ntail\n");
        assert_eq!(M.existing(&b), Some("<!-- b -->\ny\n<!-- e -->"));
        assert_eq!(M.update(&b, None, &a), a.clone() + "\ntail\n");
        assert_eq!(M.update("# T\n", None, "nothing"), "# T\n");
    }
}
