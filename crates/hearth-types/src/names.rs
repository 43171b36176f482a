//! Checks on the names of stored objects (images, pools, VMs, accounts, notices), shared by
//! the modules that validate them.

/// Names of images, pools and VMs: a DNS label, so a VM name can be its hostname.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: `{name}` must be 1-63 lowercase letters, digits or inner hyphens"
        ))
    }
}

/// [`check_name`]'s rule as a JSON Schema pattern, for the API's description.
pub const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// `Blob::sha256`: 64 lowercase hex digits.
pub const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

/// A domain name of labels of letters, digits, `-` and `_`, maybe with the final dot.
pub const DOMAIN_PATTERN: &str = "^[A-Za-z0-9_-]{1,63}(\\.[A-Za-z0-9_-]{1,63})*\\.?$";

/// A record set's name: `@`, or a domain name of labels of letters, digits, `-` and `_`.
pub const RECORD_NAME_PATTERN: &str = "^(@|[A-Za-z0-9_-]{1,63}(\\.[A-Za-z0-9_-]{1,63})*\\.?)$";

/// `account::check_ssh_key`'s rule: `TYPE BASE64 [comment]` on one line, the parts apart by
/// spaces or tabs (the check takes any whitespace but a newline; the description keeps to
/// these two).
pub const SSH_KEY_PATTERN: &str =
    "^[ \\t]*(ssh-|ecdsa-sha2-|sk-)\\S*[ \\t]+[A-Za-z0-9+/=]+([ \\t][^\\n]*)?$";

/// A service or node name in `ClusterService`: one DNS label, any case.
pub const LABEL_PATTERN: &str = "^[A-Za-z0-9-]{1,63}$";
