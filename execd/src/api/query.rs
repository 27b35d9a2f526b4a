//! Query-string parsing with percent-decoding.

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All values of `name` in the query string `query`.
pub fn params<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.unwrap_or("").split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// The first value of `name`.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    params(query, name).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("a%20b+c%2Fd%zz%4"), "a b c/d%zz%4");
        assert_eq!(
            param(Some("id=abc&cursor=12"), "cursor").as_deref(),
            Some("12")
        );
        assert_eq!(param(Some("id"), "id").as_deref(), Some(""));
        assert_eq!(param(None, "id"), None);
        assert_eq!(
            params(Some("path=a&path=b%2Fc"), "path").collect::<Vec<_>>(),
            ["a", "b/c"]
        );
    }
}
