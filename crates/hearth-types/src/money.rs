//! Money without floats: `Amount`, a decimal with six places kept as an integer count of
//! millionths (prices per vCPU-hour are fractions of a cent), written and read as decimal
//! text ("0.004", "12.50"), and `Prices`, a plan's price list in one currency. Sums are
//! exact; rounding to the currency's cents happens once, on an invoice line, half away from
//! zero (`Amount::to_cents`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Millionths in one unit of currency.
const SCALE: i128 = 1_000_000;
/// The most an amount may be, in units (a trillion): far above any co-op's price or
/// invoice, far below where sums of them could overflow.
const MAX_UNITS: i128 = 1_000_000_000_000;

/// An exact decimal amount of money, to a millionth of a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// The amount in millionths.
    pub fn micros(self) -> i128 {
        self.0
    }

    pub fn from_micros(micros: i128) -> Amount {
        Amount(micros)
    }

    /// This price times `numerator / denominator` of its unit (hours of a month, say),
    /// rounded to the nearest millionth, half away from zero. `None` for a zero
    /// denominator or an overflow.
    pub fn times(self, numerator: i128, denominator: i128) -> Option<Amount> {
        if denominator == 0 {
            return None;
        }
        let product = self.0.checked_mul(numerator)?;
        Some(Amount(divide_rounding(product, denominator)))
    }

    /// This price times `numerator / denominator` of its unit, in whole cents, rounded once,
    /// half away from zero: an invoice line's amount, exact to the cent. `None` for a zero
    /// denominator or an overflow.
    pub fn cents_times(self, numerator: i128, denominator: i128) -> Option<i128> {
        if denominator == 0 {
            return None;
        }
        let product = self.0.checked_mul(numerator)?;
        Some(divide_rounding(
            product,
            denominator.checked_mul(SCALE / 100)?,
        ))
    }

    /// `numerator / denominator` as an amount (a quantity such as 1.5 vCPU-hours), to the
    /// nearest millionth; `None` for a zero denominator or an overflow.
    pub fn ratio(numerator: i128, denominator: i128) -> Option<Amount> {
        if denominator == 0 {
            return None;
        }
        Some(Amount(divide_rounding(
            numerator.checked_mul(SCALE)?,
            denominator,
        )))
    }

    pub fn from_cents(cents: i128) -> Amount {
        Amount(cents * (SCALE / 100))
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// Whole cents, rounded half away from zero: what an invoice line shows and sums.
    pub fn to_cents(self) -> i128 {
        divide_rounding(self.0, SCALE / 100)
    }
}

/// `value / divisor`, rounded to the nearest integer, half away from zero.
fn divide_rounding(value: i128, divisor: i128) -> i128 {
    let (quotient, remainder) = (value / divisor, value % divisor);
    if remainder.abs() * 2 >= divisor.abs() {
        quotient + value.signum() * divisor.signum()
    } else {
        quotient
    }
}

impl fmt::Display for Amount {
    /// At least two decimals, and more only where they are not zero: "0.004", "12.50".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let (units, fraction) = (self.0.abs() / SCALE, self.0.abs() % SCALE);
        let digits = format!("{fraction:06}");
        let kept = digits.trim_end_matches('0');
        let kept = if kept.len() < 2 { &digits[..2] } else { kept };
        write!(f, "{sign}{units}.{kept}")
    }
}

impl FromStr for Amount {
    type Err = String;

    /// A plain decimal: digits, at most one point, at most six decimals, an optional minus.
    fn from_str(text: &str) -> Result<Amount, String> {
        let bad = || {
            format!(
                "`{text}` is not an amount; write a decimal such as 0.004 or 12.50 (at most 6 decimals)"
            )
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if units.is_empty() || !all_digits(units) || !all_digits(fraction) || fraction.len() > 6 {
            return Err(bad());
        }
        let units: i128 = units.parse().map_err(|_| bad())?;
        if units > MAX_UNITS {
            return Err(format!("`{text}` is more than {MAX_UNITS}"));
        }
        let fraction: i128 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
        let micros = units * SCALE + fraction;
        Ok(Amount(if negative { -micros } else { micros }))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]{1,12}(\\.[0-9]{1,6})?$",
            "description": "A decimal amount of money, at most 6 decimals (no floats), as a string",
        })
    }
}

/// The schema of an amount that may be negative (an invoice's credit lines and totals).
pub fn signed_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^-?[0-9]{1,13}(\\.[0-9]{1,6})?$",
        "description": "A decimal amount of money, at most 6 decimals, negative for a credit",
    })
}

/// The schema of a credit: a positive amount in whole cents.
pub fn credit_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^(0{0,3}[1-9][0-9]{0,8}(\\.[0-9]{1,2})?|0{1,3}\\.([0-9][1-9]|[1-9][0-9]?))$",
        "description": "A positive amount in whole cents, such as 5.00",
    })
}

/// What a plan charges, in one currency. Each price is optional: none is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// An ISO 4217 code: three capital letters, such as EUR or USD.
    #[schemars(regex(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    /// Per vCPU per hour a VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_hour: Option<Amount>,
    /// Per GiB of memory per hour a VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gib_ram_hour: Option<Amount>,
    /// Per GiB of disk per month, running or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gib_disk_month: Option<Amount>,
    /// Per address per month, running or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_month: Option<Amount>,
    /// Per GiB of backups kept per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_gib_month: Option<Amount>,
}

impl Prices {
    /// A known-looking currency code and no negative price, each problem naming its field.
    pub fn validate(&self) -> Result<(), String> {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "currency: `{}` is not a currency code; give three capital letters such as EUR",
                self.currency
            ));
        }
        for (field, price) in self.each() {
            if price.is_some_and(|p| p < Amount::ZERO) {
                return Err(format!("{field}: a price cannot be negative"));
            }
        }
        Ok(())
    }

    /// Every price with its field's name.
    pub fn each(&self) -> [(&'static str, Option<Amount>); 5] {
        [
            ("vcpu_hour", self.vcpu_hour),
            ("gib_ram_hour", self.gib_ram_hour),
            ("gib_disk_month", self.gib_disk_month),
            ("address_month", self.address_month),
            ("backup_gib_month", self.backup_gib_month),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(text: &str) -> Amount {
        text.parse().unwrap()
    }

    #[test]
    fn amounts_read_and_write_as_exact_decimals() {
        for (text, micros, shown) in [
            ("0.004", 4_000, "0.004"),
            ("12.5", 12_500_000, "12.50"),
            ("12.50", 12_500_000, "12.50"),
            ("3", 3_000_000, "3.00"),
            ("0.000001", 1, "0.000001"),
            ("-1.25", -1_250_000, "-1.25"),
        ] {
            assert_eq!(amount(text).micros(), micros, "{text}");
            assert_eq!(amount(text).to_string(), shown, "{text}");
        }
        for bad in [
            "",
            ".5",
            "1.2345678",
            "1e3",
            "0x10",
            "1,50",
            "--1",
            "1.2.3",
            " 1",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad:?}");
        }
        assert!("1000000000001".parse::<Amount>().is_err());
        let json = serde_json::to_string(&amount("0.10")).unwrap();
        assert_eq!(json, "\"0.10\"");
        assert_eq!(
            serde_json::from_str::<Amount>(&json).unwrap(),
            amount("0.1")
        );
        assert!(
            serde_json::from_str::<Amount>("0.1").is_err(),
            "a float is refused"
        );
    }

    #[test]
    fn sums_are_exact_and_rounding_happens_once_in_cents() {
        // 0.1 + 0.2 is 0.3 here, as it is not in floating point.
        let sum = amount("0.1").checked_add(amount("0.2")).unwrap();
        assert_eq!(sum, amount("0.3"));
        // 720 hours of a vCPU at 0.004: 2.88 exactly.
        assert_eq!(amount("0.004").times(720, 1).unwrap(), amount("2.88"));
        // A month's price for 10 of its 30 days: a third, to the millionth, half up.
        assert_eq!(amount("1.00").times(10, 30).unwrap(), amount("0.333333"));
        assert_eq!(amount("2.00").times(1, 3).unwrap(), amount("0.666667"));
        assert_eq!(amount("0.333333").to_cents(), 33);
        assert_eq!(
            amount("0.005").to_cents(),
            1,
            "half a cent rounds away from zero"
        );
        assert_eq!(amount("-0.005").to_cents(), -1);
        assert_eq!(amount("0.004999").to_cents(), 0);
        assert_eq!(amount("1").times(1, 0), None);
    }

    #[test]
    fn prices_name_the_field_at_fault() {
        let mut prices = Prices {
            currency: "EUR".into(),
            vcpu_hour: Some(amount("0.004")),
            gib_ram_hour: None,
            gib_disk_month: Some(amount("0.05")),
            address_month: None,
            backup_gib_month: None,
        };
        prices.validate().unwrap();
        prices.currency = "euro".into();
        assert!(prices.validate().unwrap_err().starts_with("currency:"));
        prices.currency = "EUR".into();
        prices.address_month = Some(amount("-1"));
        assert!(prices.validate().unwrap_err().starts_with("address_month:"));
        let json = r#"{"currency":"USD","vcpu_hour":"0.01","cpu":"1"}"#;
        assert!(
            serde_json::from_str::<Prices>(json).is_err(),
            "unknown fields"
        );
    }
}
