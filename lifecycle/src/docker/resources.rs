//! Resource strings to Docker's units: `cpu: "500m"` → nano-CPUs,
//! `memory: "512Mi"` → bytes.

/// Nano-CPUs for a Kubernetes-style CPU quantity (`"500m"`, `"2"`, `"1.5"`).
pub fn cpu_nanos(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let cores = if let Some(m) = t.strip_suffix('m') {
        m.parse::<f64>().map(|v| v / 1000.0)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| format!("invalid cpu quantity {s:?}: expected e.g. \"500m\" or \"2\""))?;
    if !cores.is_finite() || cores <= 0.0 || cores > 1024.0 {
        return Err(format!(
            "invalid cpu quantity {s:?}: must be above 0 and at most 1024 cores"
        ));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok((cores * 1e9).round() as i64)
}

/// Bytes for a memory quantity: `Ki/Mi/Gi/Ti` (powers of 1024), `k/m/g/t`
/// and `kb/mb/…` (powers of 1000), or plain bytes, as upstream parses it.
pub fn memory_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("invalid memory quantity {s:?}: expected e.g. \"512Mi\" or \"2Gi\"");
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: i64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let mult: i64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_i64.pow(2),
        "g" | "gb" => 1000_i64.pow(3),
        "t" | "tb" => 1000_i64.pow(4),
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    // Docker refuses less than 6 MB.
    if bytes < 6 << 20 {
        return Err(format!("invalid memory quantity {s:?}: at least 6Mi"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_nanos("500m"), Ok(500_000_000));
        assert_eq!(cpu_nanos("2"), Ok(2_000_000_000));
        assert_eq!(cpu_nanos("1.5"), Ok(1_500_000_000));
        assert!(cpu_nanos("0").is_err());
        assert!(cpu_nanos("-1").is_err());
        assert!(cpu_nanos("lots").is_err());
        assert_eq!(memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(memory_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(memory_bytes("1g"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("64MB"), Ok(64_000_000));
        assert!(memory_bytes("0.5Gi").is_err());
        assert!(memory_bytes("1Zi").is_err());
        assert!(memory_bytes("1k").is_err());
        assert!(memory_bytes("99999999999Ti").is_err());
    }
}
