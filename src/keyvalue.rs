//! The `key = value` line format of the backup tools' metadata files (`xtrabackup_checkpoints`,
//! `xtrabackup_info`), which the agent's own small files and stream entries reuse.

/// The value of the first `key = value` line for `key`, trimmed.
pub fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// `key = value` lines, with newlines in values turned into spaces so each stays one line.
pub fn render<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k} = {}\n", one_line(v)))
        .collect()
}

/// `s` with line breaks replaced by spaces.
pub fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let text = render([("backup_type", "full-backuped"), ("reason", "a\nb")]);
        assert_eq!(text, "backup_type = full-backuped\nreason = a b\n");
        assert_eq!(
            field(&text, "backup_type").as_deref(),
            Some("full-backuped")
        );
        assert_eq!(field(&text, "reason").as_deref(), Some("a b"));
        assert_eq!(field(&text, "missing"), None);
        assert_eq!(field("x=1\nx = 2", "x").as_deref(), Some("1"));
        assert_eq!(field("no equals sign", "no equals sign"), None);
    }
}
