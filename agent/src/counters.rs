//! A host's own TCP counters (the kernel's MIB, `/proc/net/snmp` and
//! `/proc/net/netstat` on Linux): what a case's packets did that no socket
//! call says — segments the receiver dropped for a bad checksum,
//! retransmitted segments, resets sent. Read before and after a case's
//! steps, their increase is evidence like the wire's.

use std::collections::BTreeMap;

/// Counters by `Section.Name` ("Tcp.InCsumErrors"), from the kernel's
/// header-line/value-line pairs ("Tcp: A B" then "Tcp: 1 2"). Values that
/// are not counters (negative: `Tcp.MaxConn` is -1) are left out.
pub fn parse_mib(text: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((section, names)), Some((again, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if section != again {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{section}.{name}"), value);
            }
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_section_names_its_values() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm MaxConn InSegs InCsumErrors\nTcp: 1 -1 7201953 3\n";
        let counters = parse_mib(snmp);
        assert_eq!(counters.get("Tcp.InCsumErrors"), Some(&3));
        assert_eq!(counters.get("Tcp.InSegs"), Some(&7_201_953));
        assert_eq!(counters.get("Ip.DefaultTTL"), Some(&64));
        assert_eq!(counters.get("Tcp.MaxConn"), None);
        assert!(parse_mib("Tcp: A B\nUdp: 1 2\n").is_empty());
    }
}
