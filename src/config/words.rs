//! TOML errors in words: what serde says ("invalid type: string \"25MB\",
//! expected u64") told as what to write instead, naming the key.

/// One more line for a TOML parse error, saying in words what is wrong and
/// what to write; None when serde's own words are plain enough.
pub fn in_words(error: &toml::de::Error, text: &str) -> Option<String> {
    let message = error.message();
    let key = error.span().and_then(|span| key_at(text, span.start));
    let key = key.as_deref().unwrap_or("this key");
    if let Some(value) = quoted_after(message, "invalid type: string ") {
        if message.ends_with("expected u64")
            || message.contains("expected usize")
            || message.contains("expected u32")
        {
            let hint = bytes_of(&value)
                .map(|b| format!(" ({value:?} is {b} bytes: write {key} = {b})"))
                .unwrap_or_default();
            return Some(format!(
                "`{key}` takes a plain number (sizes in bytes, counts as numbers), not the text {value:?}{hint}"
            ));
        }
        if message.contains("expected a sequence") {
            return Some(format!(
                "`{key}` takes a list, even of one: write {key} = [{value:?}]"
            ));
        }
        if message.contains("expected a boolean") {
            return Some(format!("`{key}` is true or false, without quotes"));
        }
    }
    if message.starts_with("invalid type: integer") && message.contains("expected a string") {
        return Some(format!("`{key}` takes text: put the value in quotes"));
    }
    if message.contains("invalid socket address syntax") {
        return Some(format!(
            "`{key}` is an address with its port, IP:PORT (\"127.0.0.1:25\", \"[::1]:25\"): the port is missing or the address is not an IP"
        ));
    }
    if message.contains("invalid type: string") && message.contains("expected a duration") {
        return Some(format!(
            "`{key}` is a duration such as \"90s\", \"5m\", \"4h\", \"4d\""
        ));
    }
    None
}

/// The value in quotes right after `prefix` in serde's message.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('"')?;
    let end = rest.find("\", expected")?;
    Some(rest[..end].to_string())
}

/// The key whose value starts at byte `at` of `text`: the name before the
/// `=` on that line, prefixed by its table ("server.max_message_size").
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    let line = &text[line_start..];
    let (name, _) = line.split_once('=')?;
    let name = name.trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_string());
    Some(match table {
        Some(t) if !name.contains('.') => format!("{t}.{name}"),
        _ => name.to_string(),
    })
}

/// "25MB", "25 MiB", "512k" as bytes (binary units, as mail servers count).
fn bytes_of(value: &str) -> Option<u64> {
    let v = value.trim().to_ascii_lowercase().replace(' ', "");
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    let number: u64 = digits.parse().ok()?;
    let factor = match &v[digits.len()..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(toml_text: &str) -> String {
        let e = toml::from_str::<crate::config::Config>(toml_text).unwrap_err();
        in_words(&e, toml_text).unwrap_or_else(|| panic!("no words for {e}"))
    }

    #[test]
    fn common_mistakes_are_told_in_words() {
        let w = words("[server]\nmax_message_size = \"25MB\"\n");
        assert!(
            w.contains("server.max_message_size") && w.contains("26214400"),
            "{w}"
        );
        let w = words("[[listener]]\naddress = \"127.0.0.1\"\n");
        assert!(w.contains("listener.address") && w.contains("port"), "{w}");
        let w = words("[relay]\ninbound_domains = \"example.lan\"\n");
        assert!(
            w.contains("relay.inbound_domains = [\"example.lan\"]"),
            "{w}"
        );
    }
}
