//! DNS record values as people write them (`10 mail.example.org.` for an MX), parsed into
//! [`RecordData`]: the one reading the CLI and the panel's forms share.

use crate::desired::RecordData;

/// A CAA value: `FLAGS TAG VALUE`, the value quoted or not.
fn caa(words: &[String]) -> Result<RecordData, String> {
    if words.len() < 3 {
        return Err("CAA takes: FLAGS TAG VALUE".into());
    }
    Ok(RecordData::Caa {
        flags: words[0]
            .parse()
            .map_err(|_| "CAA: flags must be a number from 0 to 255".to_owned())?,
        tag: words[1].clone(),
        value: words[2..].join(" ").trim_matches('"').to_owned(),
    })
}

/// Parses a record value as written on the command line or in the panel's form: the
/// type's fields as words (`10 mail.example.org.` for MX), checked.
pub fn parse_value(kind: &str, words: &[String]) -> Result<RecordData, String> {
    let number = |idx: usize, what: &str| -> Result<u16, String> {
        words
            .get(idx)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("{kind}: {what} must be a number from 0 to 65535"))
    };
    let word = |idx: usize, what: &str| -> Result<String, String> {
        words
            .get(idx)
            .cloned()
            .ok_or_else(|| format!("{kind}: give the {what}"))
    };
    let arity = |n: usize, form: &str| -> Result<(), String> {
        if words.len() == n {
            Ok(())
        } else {
            Err(format!("{kind} takes: {form}"))
        }
    };
    let data = match kind.to_ascii_uppercase().as_str() {
        "A" => {
            arity(1, "ADDRESS")?;
            RecordData::A {
                address: words[0]
                    .parse()
                    .map_err(|_| format!("A: `{}` is not an IPv4 address", words[0]))?,
            }
        }
        "AAAA" => {
            arity(1, "ADDRESS")?;
            RecordData::Aaaa {
                address: words[0]
                    .parse()
                    .map_err(|_| format!("AAAA: `{}` is not an IPv6 address", words[0]))?,
            }
        }
        "CNAME" => {
            arity(1, "TARGET")?;
            RecordData::Cname {
                target: word(0, "target")?,
            }
        }
        "TXT" => RecordData::Txt {
            text: words.join(" "),
        },
        "MX" => {
            arity(2, "PREFERENCE EXCHANGE")?;
            RecordData::Mx {
                preference: number(0, "preference")?,
                exchange: word(1, "exchange")?,
            }
        }
        "SRV" => {
            arity(4, "PRIORITY WEIGHT PORT TARGET")?;
            RecordData::Srv {
                priority: number(0, "priority")?,
                weight: number(1, "weight")?,
                port: number(2, "port")?,
                target: word(3, "target")?,
            }
        }
        "CAA" => caa(words)?,
        other => {
            return Err(format!(
                "unknown record type `{other}`; use A, AAAA, CNAME, TXT, MX, SRV or CAA"
            ));
        }
    };
    data.validate()?;
    Ok(data)
}

/// Several values of one type separated by `,` (or by lines): `10 a.example., 20 b.example.`.
pub fn parse_values(kind: &str, text: &str) -> Result<Vec<RecordData>, String> {
    let values: Vec<RecordData> = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|one| !one.is_empty())
        .map(|one| {
            let words: Vec<String> = one.split_whitespace().map(str::to_owned).collect();
            parse_value(kind, &words)
        })
        .collect::<Result<_, _>>()?;
    match values.is_empty() {
        true => Err(format!("{kind}: give at least one value")),
        false => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_value, parse_values};

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(String::from).collect()
    }

    #[test]
    fn values_parse_per_type() {
        assert!(parse_value("a", &words("192.0.2.1")).is_ok());
        assert!(parse_value("A", &words("::1")).is_err());
        assert!(parse_value("MX", &words("10 mail.example.org.")).is_ok());
        assert!(
            parse_value("MX", &words("ten mail.example.org."))
                .unwrap_err()
                .contains("preference")
        );
        assert!(parse_value("SRV", &words("0 5 993 mail.example.org.")).is_ok());
        assert!(parse_value("SRV", &words("0 5 mail")).is_err());
        assert!(parse_value("CNAME", &words("bad name!")).is_err());
        assert!(
            parse_value("NAPTR", &words("x"))
                .unwrap_err()
                .contains("unknown record type")
        );
    }

    #[test]
    fn lists_split_on_commas_and_lines() {
        assert_eq!(
            parse_values("MX", "10 a.example., 20 b.example.")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_values("A", "192.0.2.1\n192.0.2.2\n").unwrap().len(),
            2
        );
        assert!(
            parse_values("A", " , ")
                .unwrap_err()
                .contains("at least one")
        );
        assert!(parse_values("A", "192.0.2.1, nope").is_err());
    }
}
