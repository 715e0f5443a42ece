//! What a link does to the packets it carries: rate, delay, jitter and
//! loss per direction, the named presets (`profile = "wifi"`, ...), the
//! checked value types the spec parser uses for them, and how a link is
//! emulated ([`Method`]).
//!
//! Directions: side `a` of a link is the device, side `b` the network
//! (access point, base station, switch), so `a_to_b` is the uplink and
//! `b_to_a` the downlink.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest delay or jitter a link may have, in milliseconds.
pub const MAX_DELAY_MS: f64 = 10_000.0;

/// A delay or jitter in milliseconds: finite, 0..=10,000. Parsing rejects
/// anything else, so a bad value in a spec is reported with its line.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Millis(f64);

impl Millis {
    /// Checks `ms`; the error says what range to use.
    pub fn new(ms: f64) -> Result<Millis, String> {
        if ms.is_finite() && (0.0..=MAX_DELAY_MS).contains(&ms) {
            Ok(Millis(ms))
        } else {
            Err(format!(
                "{ms} ms is not a usable delay: give milliseconds from 0 to {MAX_DELAY_MS}"
            ))
        }
    }
    /// The value in milliseconds.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Millis::new(f64::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A loss rate in percent: finite, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Percent(f64);

impl Percent {
    /// Checks `pct`; the error says what range to use.
    pub fn new(pct: f64) -> Result<Percent, String> {
        if pct.is_finite() && (0.0..=100.0).contains(&pct) {
            Ok(Percent(pct))
        } else {
            Err(format!(
                "{pct} % is not a usable loss rate: give a percentage from 0 to 100"
            ))
        }
    }
    /// The value in percent.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Percent::new(f64::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A rate in Mbit/s, at least 1. (Leave the key out for an unshaped link.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Mbit(u32);

impl Mbit {
    /// Checks `mbit`; 0 is an error that says to leave the rate out instead.
    pub fn new(mbit: u32) -> Result<Mbit, String> {
        if mbit == 0 {
            Err("rate 0 Mbit/s: give at least 1, or leave the rate out for an unshaped link".into())
        } else {
            Ok(Mbit(mbit))
        }
    }
    /// The value in Mbit/s.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Mbit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        let v = u32::try_from(v).map_err(|_| {
            D::Error::custom(format!(
                "rate {v} Mbit/s: give a whole number of Mbit/s from 1 to {}",
                u32::MAX
            ))
        })?;
        Mbit::new(v).map_err(D::Error::custom)
    }
}

/// A named link preset. The figures are typical published ones, not
/// worst or best cases; every one can be overridden key by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Switched gigabit LAN: 1000 Mbit/s, no added delay or loss.
    Ethernet,
    /// Home WLAN to an access point: 50 Mbit/s up, 100 down, 2 ms ± 1 ms, 0.1 % loss.
    Wifi,
    /// Wi-Fi Direct between two devices: 50 Mbit/s, 3 ms ± 1.5 ms, 0.5 % loss.
    WifiDirect,
    /// LTE from a phone: 10 Mbit/s up, 30 down, 25 ms ± 4 ms, 0.1 % loss.
    Lte,
    /// Bluetooth PAN: 2 Mbit/s, 15 ms ± 5 ms, 1 % loss.
    Bluetooth,
}

/// Every profile, in the order the documentation lists them.
pub const PROFILES: [Profile; 5] = [
    Profile::Ethernet,
    Profile::Wifi,
    Profile::WifiDirect,
    Profile::Lte,
    Profile::Bluetooth,
];

impl Profile {
    /// The name a spec and `--links` use for this profile.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Ethernet => "ethernet",
            Profile::Wifi => "wifi",
            Profile::WifiDirect => "wifi-direct",
            Profile::Lte => "lte",
            Profile::Bluetooth => "bluetooth",
        }
    }

    /// The preset's values; sources in the comments (and in
    /// conf/testbeds/two-gateways.toml).
    pub fn params(self) -> LinkParams {
        let dir = |rate: u32, delay: f64, jitter: f64, loss: f64| DirParams {
            rate_mbit: Some(rate),
            delay_ms: delay,
            jitter_ms: jitter,
            loss_pct: loss,
        };
        match self {
            // Switched gigabit LAN (IEEE 802.3ab 1000BASE-T line rate). A
            // LAN's own latency (tens of microseconds) is what a veth pair
            // already has, so no delay is added and no emulator is needed.
            Profile::Ethernet => LinkParams::symmetric(dir(1000, 0.0, 0.0, 0.0)),
            // Home 802.11n/ac WLAN, station to access point: TCP goodput of
            // about 100 Mbit/s down and 50 up, a few ms of one-way delay with
            // ms-scale jitter (Pei et al., "WiFi can be the weakest link of
            // round trip network latency in the wild", IEEE INFOCOM 2016;
            // Sui et al., "Characterizing and improving WiFi latency in
            // large-scale operational networks", ACM MobiSys 2016), and a
            // residual loss after MAC retransmissions of about 0.1 %.
            Profile::Wifi => LinkParams {
                a_to_b: dir(50, 2.0, 1.0, 0.1),
                b_to_a: dir(100, 2.0, 1.0, 0.1),
            },
            // Wi-Fi Direct between two devices (802.11n, one group owner):
            // tens of Mbit/s, slightly more delay and loss than with an
            // access point (Camps-Mur, Garcia-Saavedra and Serrano,
            // "Device-to-device communications with Wi-Fi Direct: overview
            // and experimentation", IEEE Wireless Communications 20(3), 2013).
            Profile::WifiDirect => LinkParams::symmetric(dir(50, 3.0, 1.5, 0.5)),
            // LTE from a phone: about 30 Mbit/s down and 10 up, 25 ms one
            // way (50 ms RTT) with a few ms of jitter, residual loss 0.1 %
            // after HARQ/RLC retransmissions (Huang et al., "An in-depth
            // study of LTE: effect of network protocol and application
            // behavior on performance", ACM SIGCOMM 2013; national LTE
            // averages of the same order in OpenSignal's "State of LTE"
            // reports).
            Profile::Lte => LinkParams {
                a_to_b: dir(10, 25.0, 4.0, 0.1),
                b_to_a: dir(30, 25.0, 4.0, 0.1),
            },
            // Bluetooth Classic EDR PAN (BNEP): 3 Mbit/s on air gives about
            // 2 Mbit/s of IP throughput (Bluetooth SIG, Core Specification
            // v5.x, EDR data rates); the 15 ms delay, 5 ms jitter and 1 %
            // loss are estimates for a PAN link, not a published figure.
            Profile::Bluetooth => LinkParams::symmetric(dir(2, 15.0, 5.0, 1.0)),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        PROFILES
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown link profile {s:?}: use one of {}",
                    PROFILES.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

/// What one direction of a link does.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DirParams {
    /// Shaping rate; None = unshaped.
    pub rate_mbit: Option<u32>,
    /// One-way delay added, in milliseconds.
    pub delay_ms: f64,
    /// Jitter around that delay, in milliseconds.
    pub jitter_ms: f64,
    /// Packets lost at random, in percent.
    pub loss_pct: f64,
}

impl DirParams {
    /// Delay, jitter or loss: needs netem (host or emulator).
    pub fn needs_netem(&self) -> bool {
        self.delay_ms > 0.0 || self.jitter_ms > 0.0 || self.loss_pct > 0.0
    }

    /// The netem arguments for this direction (after `netem`).
    ///
    /// With jitter, netem also gets a rate far above any link's (10 Gbit/s):
    /// netem then times each packet from the one before it, so jitter
    /// varies the delay without reordering packets, as a real radio link
    /// does. The link's own rate is still the host's tbf/htb.
    pub fn netem_args(&self) -> Vec<String> {
        let mut a = vec!["limit".to_string(), "20000".to_string()];
        if self.delay_ms > 0.0 || self.jitter_ms > 0.0 {
            a.push("delay".into());
            a.push(format!("{}us", (self.delay_ms * 1000.0).round() as u64));
            if self.jitter_ms > 0.0 {
                a.push(format!("{}us", (self.jitter_ms * 1000.0).round() as u64));
            }
        }
        if self.loss_pct > 0.0 {
            a.extend([
                "loss".into(),
                "random".into(),
                format!("{}%", self.loss_pct),
            ]);
        }
        if self.jitter_ms > 0.0 {
            a.extend(["rate".into(), "10gbit".into()]);
        }
        a
    }
}

impl fmt::Display for DirParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate_mbit {
            Some(r) => write!(f, "{r} Mbit/s")?,
            None => write!(f, "unshaped")?,
        }
        if self.delay_ms > 0.0 || self.jitter_ms > 0.0 {
            write!(f, ", delay {} ms", self.delay_ms)?;
            if self.jitter_ms > 0.0 {
                write!(f, " ± {} ms", self.jitter_ms)?;
            }
        }
        if self.loss_pct > 0.0 {
            write!(f, ", loss {} %", self.loss_pct)?;
        }
        Ok(())
    }
}

/// What a link does, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinkParams {
    /// From the device (side `a`) to the network: the uplink.
    pub a_to_b: DirParams,
    /// From the network (side `b`) to the device: the downlink.
    pub b_to_a: DirParams,
}

impl LinkParams {
    /// The same parameters in both directions.
    pub fn symmetric(d: DirParams) -> LinkParams {
        LinkParams {
            a_to_b: d,
            b_to_a: d,
        }
    }
    /// Rate only, or nothing at all.
    pub fn rate_only(rate_mbit: Option<u32>) -> LinkParams {
        LinkParams::symmetric(DirParams {
            rate_mbit,
            ..DirParams::default()
        })
    }
    /// Whether either direction needs netem (delay, jitter or loss).
    pub fn needs_netem(&self) -> bool {
        self.a_to_b.needs_netem() || self.b_to_a.needs_netem()
    }
    /// The direction leaving side `side` (0 = a, 1 = b).
    pub fn from_side(&self, side: usize) -> &DirParams {
        if side == 0 {
            &self.a_to_b
        } else {
            &self.b_to_a
        }
    }
}

impl fmt::Display for LinkParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.a_to_b == self.b_to_a {
            write!(f, "{}", self.a_to_b)
        } else {
            write!(f, "a->b {}; b->a {}", self.a_to_b, self.b_to_a)
        }
    }
}

/// How a testbed's links get delay, jitter and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No delay, jitter or loss: a plain veth pair (rate by tbf/htb).
    Plain,
    /// The host kernel's netem on the veth ends.
    HostNetem,
    /// A UML kernel with netem bridging the link's two halves, in the
    /// testbed's emulator namespace.
    UmlNetem,
}

impl Method {
    /// A short description for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Plain => "plain veth",
            Method::HostNetem => "host netem",
            Method::UmlNetem => "uml-netem emulator",
        }
    }
}

/// A link as `Options::links` / `--links` give it: a profile, or a plain
/// rate in Mbit/s (rate only, nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkChoice {
    /// The named preset, in both its directions.
    Profile(Profile),
    /// Only a rate in Mbit/s, the same both ways; no delay or loss.
    Rate(u32),
}

impl FromStr for LinkChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<LinkChoice, String> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let rate: u32 = s
                .parse()
                .map_err(|_| format!("link rate {s:?} is too large"))?;
            return Mbit::new(rate).map(|r| LinkChoice::Rate(r.get()));
        }
        s.parse::<Profile>()
            .map(LinkChoice::Profile)
            .map_err(|e| format!("{e}, or a rate in Mbit/s such as 1000"))
    }
}

impl fmt::Display for LinkChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkChoice::Profile(p) => write!(f, "{p}"),
            LinkChoice::Rate(r) => write!(f, "{r}"),
        }
    }
}

/// Parse a comma-separated list such as `wifi,lte` or `1000,1000`.
pub fn parse_choices(list: &str) -> Result<Vec<LinkChoice>, String> {
    list.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_by_name_and_choices_take_rates() {
        for p in PROFILES {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        assert_eq!(
            parse_choices("wifi,lte").unwrap(),
            vec![
                LinkChoice::Profile(Profile::Wifi),
                LinkChoice::Profile(Profile::Lte)
            ]
        );
        assert_eq!(
            parse_choices("1000,wifi-direct").unwrap(),
            vec![
                LinkChoice::Rate(1000),
                LinkChoice::Profile(Profile::WifiDirect)
            ]
        );
        let e = parse_choices("wifi,5g").unwrap_err();
        assert!(e.contains("unknown link profile \"5g\""), "{e}");
        assert!(parse_choices("0").is_err());
        assert!(Millis::new(f64::NAN).is_err());
        assert!(Millis::new(-1.0).is_err());
        assert!(Percent::new(100.5).is_err());
    }

    #[test]
    fn netem_arguments_follow_the_values() {
        let d = DirParams {
            rate_mbit: Some(30),
            delay_ms: 25.0,
            jitter_ms: 4.0,
            loss_pct: 0.1,
        };
        assert_eq!(
            d.netem_args().join(" "),
            "limit 20000 delay 25000us 4000us loss random 0.1% rate 10gbit"
        );
        let d = DirParams {
            rate_mbit: None,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss_pct: 2.0,
        };
        assert_eq!(d.netem_args().join(" "), "limit 20000 loss random 2%");
        assert!(!Profile::Ethernet.params().needs_netem());
        assert!(Profile::Lte.params().needs_netem());
    }
}
