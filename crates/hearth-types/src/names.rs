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
