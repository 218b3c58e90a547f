//! Syntax checks for values that end up in file names, process arguments or environments:
//! host names, MAC addresses, UUIDs. The API boundary (`cmdlib`) checks them with upstream's
//! messages; what a backend is given is typed (`HostName`, `MacAddr`, `DiskId`: values that
//! passed the check, also when deserialized by a node agent), and the backends check plain
//! names again before building a path (defence in depth), so a value that slipped past one
//! check still cannot name a host file.

/// Ganeti's host name rule (`netutils.Hostname.GetNormalizedName`): lower-cased, only
/// `[a-z0-9._-]`, 1–255 characters, no empty label. A trailing dot is dropped. Such a name is
/// also a safe file name: it has no `/` and is never `.` or `..`.
pub fn hostname(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower.len() <= 255
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !lower.contains("..")
        && !lower.starts_with('.');
    valid.then(|| lower.trim_end_matches('.').to_string())
}

/// A name that may be used as one path component under a directory gantry owns.
pub fn is_safe_component(name: &str) -> bool {
    hostname(name).is_some_and(|n| n == name)
}

/// `aa:bb:cc:dd:ee:ff`, hexadecimal, either case.
pub fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A UUID as gantry generates them (hex digits and dashes), e.g. a disk's.
pub fn is_uuid(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Defines a string type that can only hold a value its check accepts: built with `new`, or
/// deserialized (so an agent refuses a bad value in a request before any backend code runs).
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<$name, String> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok($name(value))
                } else {
                    Err(format!(concat!("invalid ", $what, " {:?}"), value))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<$name, String> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

checked_string!(
    /// An instance or node name that is also a safe path component (see `hostname`).
    HostName,
    is_safe_component,
    "host name"
);
checked_string!(
    /// A MAC address, safe inside a QEMU `-device` argument.
    MacAddr,
    is_mac,
    "MAC address"
);
checked_string!(
    /// A disk's UUID, safe as part of a file name.
    DiskId,
    is_uuid,
    "disk id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_ganeti() {
        assert_eq!(
            hostname("Web1.Example.com").as_deref(),
            Some("web1.example.com")
        );
        assert_eq!(hostname("web1.").as_deref(), Some("web1"));
        for bad in [
            "", "/etc", "../x", "..", ".", "a..b", ".a", "a b", "a/b", "a,b", "é",
        ] {
            assert_eq!(hostname(bad), None, "{bad:?}");
        }
        assert!(
            !is_safe_component("Web1"),
            "only the normalised form is a path component"
        );
        assert!(is_safe_component("web1.example.com"));
    }

    #[test]
    fn checked_types_refuse_bad_values_even_when_deserialized() {
        assert!(HostName::new("web1.example.com").is_ok());
        assert!(serde_json::from_str::<HostName>("\"../../etc\"").is_err());
        assert!(serde_json::from_str::<MacAddr>("\"52:54:00:12:34:56,romfile=/x\"").is_err());
        assert!(serde_json::from_str::<DiskId>("\"a/b\"").is_err());
        let mac: MacAddr = serde_json::from_str("\"52:54:00:12:34:56\"").unwrap();
        assert_eq!(mac, "52:54:00:12:34:56");
    }

    #[test]
    fn macs_and_uuids() {
        assert!(is_mac("52:54:00:12:34:AB"));
        assert!(!is_mac("52:54:00:12:34:56,romfile=/etc/shadow"));
        assert!(!is_mac("52:54:00:12:34"));
        assert!(is_uuid("0f8e2c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"));
        assert!(!is_uuid("../../etc"));
        assert!(!is_uuid(""));
    }
}
