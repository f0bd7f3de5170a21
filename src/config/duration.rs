//! Durations written as strings in the config ("90s", "5m", "4h", "4d").

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A config duration; parses humantime strings and prints them back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for ConfigDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(ConfigDuration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write e.g. \"90s\", \"5m\", \"4h\", \"4d\"")
            })
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(
            "90s".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_secs(90)
        );
        assert_eq!(
            "5m".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_secs(300)
        );
        assert_eq!(
            "4d".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_secs(4 * 86400)
        );
        assert!("soon".parse::<ConfigDuration>().is_err());
    }
}
