//! Table-driven packet fixtures, run through the real XDP program with
//! `BPF_PROG_TEST_RUN`.
//!
//! Each case is a frame, the allow and block rules in force, and the
//! expected verdict. The runner checks the XDP action, that exactly the
//! expected reason's counter moved (by one packet and the frame's bytes),
//! that exactly the expected list entry counted a hit (or none did), and
//! that the userspace reference model agrees with the table. One program is
//! loaded per test function; rules are reset between cases.

use std::{collections::BTreeMap, net::IpAddr};

use spacefilter::{
    Filter, List, LoadOptions, Prefix, Reason,
    Reason::{Allowlisted, Blocked, Malformed, NotIp, Passed},
    bpf::{Sample, Sampling},
};
use spacefilter_tests::{
    packets::{Ext, Frame, Layer, Packet, TPID_8021AD, v4, v4_far, v6},
    reference, require_root,
};

fn prefix(s: &str) -> Prefix {
    s.parse()
        .unwrap_or_else(|e| panic!("bad prefix in a fixture: {e}"))
}

struct Case {
    name: String,
    frame: Vec<u8>,
    allow: Vec<Prefix>,
    block: Vec<Prefix>,
    reason: Reason,
    /// The entry expected to count the hit; `None` means the only entry of
    /// the list that decided (if the reason is a list's).
    hit: Option<(List, Prefix)>,
}

impl Case {
    fn new(name: impl Into<String>, frame: impl Into<Vec<u8>>, reason: Reason) -> Self {
        Self {
            name: name.into(),
            frame: frame.into(),
            allow: Vec::new(),
            block: Vec::new(),
            reason,
            hit: None,
        }
    }

    fn allow(mut self, p: &str) -> Self {
        self.allow.push(prefix(p));
        self
    }

    fn block(mut self, p: &str) -> Self {
        self.block.push(prefix(p));
        self
    }

    fn hit(mut self, list: List, p: &str) -> Self {
        self.hit = Some((list, prefix(p)));
        self
    }

    /// The entry that must count a hit.
    fn expected_hit(&self) -> Option<(List, Prefix)> {
        let list = match self.reason {
            Allowlisted => List::Allow,
            Blocked => List::Block,
            _ => {
                assert!(
                    self.hit.is_none(),
                    "{}: a hit without a list verdict",
                    self.name
                );
                return None;
            }
        };
        if let Some(hit) = self.hit {
            return Some(hit);
        }
        let entries = match list {
            List::Allow => &self.allow,
            List::Block | List::Auto => &self.block,
        };
        assert_eq!(
            entries.len(),
            1,
            "{}: say which of several entries counts the hit",
            self.name
        );
        Some((list, entries[0]))
    }
}

/// One loaded program and the cases run through it.
struct Table {
    group: &'static str,
    filter: Filter,
    ran: usize,
    failures: Vec<String>,
}

impl Table {
    fn load(group: &'static str) -> Self {
        require_root();
        Self {
            group,
            filter: Filter::load(LoadOptions::default()).expect("load the XDP program"),
            ran: 0,
            failures: Vec::new(),
        }
    }

    fn reset(&mut self) {
        for entry in self.filter.entries().expect("entries") {
            let removed = match entry.list {
                List::Allow => self.filter.unallow(entry.prefix),
                // The filter's lists hold no auto entries (the daemon's do).
                List::Block | List::Auto => self.filter.unblock(entry.prefix),
            };
            assert!(
                removed.expect("remove a rule"),
                "{} was listed",
                entry.prefix
            );
        }
    }

    fn hits(&self) -> BTreeMap<(List, Prefix), u64> {
        self.filter
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| ((e.list, e.prefix), e.hits))
            .collect()
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "cases are built inline, at the call"
    )]
    fn run(&mut self, case: Case) {
        self.ran += 1;
        if let Err(problems) = self.check(&case) {
            self.failures.push(format!(
                "{} (allow {:?}, block {:?}, {} bytes {:02x?}): {}",
                case.name,
                case.allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                case.block
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                case.frame.len(),
                &case.frame[..case.frame.len().min(80)],
                problems.join("; ")
            ));
        }
    }

    fn check(&mut self, case: &Case) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let expected_hit = case.expected_hit();

        // The model must agree with the table, or one of them is wrong.
        let model = reference::decide(&case.frame, &case.allow, &case.block);
        if model != case.reason {
            problems.push(format!("reference model says {model:?}"));
        }
        let model_hit = reference::decide_hit(&case.frame, &case.allow, &case.block)
            .filter(|_| matches!(model, Allowlisted | Blocked));
        if model_hit != expected_hit {
            problems.push(format!("reference model hits {model_hit:?}"));
        }

        self.reset();
        for &p in &case.allow {
            self.filter.allow(p).expect("allow");
        }
        for &p in &case.block {
            self.filter.block(p).expect("block");
        }
        let counters = self.filter.counters().expect("counters");
        let hits = self.hits();
        let (action, _) = self.filter.test_run(&case.frame, 1).expect("test run");
        let delta = self.filter.counters().expect("counters").since(&counters);
        let hits_after = self.hits();

        let want = reference::action(case.reason);
        if action != want {
            problems.push(format!("action {action}, expected {want}"));
        }
        for reason in Reason::ALL {
            let got = delta.get(reason);
            let (packets, bytes) = if reason == case.reason {
                (1, case.frame.len() as u64)
            } else {
                (0, 0)
            };
            if (got.packets, got.bytes) != (packets, bytes) {
                problems.push(format!(
                    "{} counter moved by {} packets/{} bytes, expected {packets}/{bytes}",
                    reason.name(),
                    got.packets,
                    got.bytes
                ));
            }
        }
        for (key, after) in &hits_after {
            let moved = after - hits.get(key).copied().unwrap_or(0);
            let want = u64::from(Some(*key) == expected_hit);
            if moved != want {
                problems.push(format!(
                    "{} entry {} counted {moved} hits, expected {want}",
                    key.0.name(),
                    key.1
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn finish(mut self) {
        self.reset();
        println!(
            "fixtures/{}: {} cases ran, {} failed",
            self.group,
            self.ran,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} {} fixtures failed:\n{}",
            self.failures.len(),
            self.ran,
            self.group,
            self.failures.join("\n")
        );
    }
}

/// One address family's addresses and prefixes for the shared cases.
struct Family {
    name: &'static str,
    src: IpAddr,
    dst: IpAddr,
    host: &'static str,
    net: &'static str,
    any: &'static str,
    /// A prefix that does not contain `src`.
    other: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "v4",
        src: IpAddr::V4(v4(1, 10)),
        dst: IpAddr::V4(v4(0, 1)),
        host: "198.18.1.10",
        net: "198.18.1.0/24",
        any: "0.0.0.0/0",
        other: "198.18.2.0/24",
    },
    Family {
        name: "v6",
        src: IpAddr::V6(v6(1, 10)),
        dst: IpAddr::V6(v6(0, 1)),
        host: "2001:2:0:1::a",
        net: "2001:2:0:1::/64",
        any: "::/0",
        other: "2001:2:0:2::/64",
    },
];

impl Family {
    fn packet(&self) -> Packet {
        Packet::ip(self.src, self.dst)
    }

    /// TCP, UDP and the family's ICMP, each with a payload.
    fn transports(&self) -> [(&'static str, Packet); 3] {
        let icmp = if self.src.is_ipv4() {
            ("icmp", self.packet().icmp_echo())
        } else {
            ("icmpv6", self.packet().icmpv6_echo())
        };
        [
            ("tcp", self.packet().tcp(40000, 443)),
            ("udp", self.packet().udp(40000, 53)),
            icmp,
        ]
        .map(|(name, p)| (name, p.payload(b"spacefilter")))
    }
}

#[test]
fn transports_clean_and_listed() {
    let mut t = Table::load("transports");
    for f in &FAMILIES {
        for (l4, packet) in f.transports() {
            let frame = packet.build();
            let name = |what: &str| format!("{} {l4} {what}", f.name);
            t.run(Case::new(name("clean"), frame.clone(), Passed));
            t.run(Case::new(name("other prefix blocked"), frame.clone(), Passed).block(f.other));
            t.run(Case::new(name("host blocked"), frame.clone(), Blocked).block(f.host));
            t.run(Case::new(name("prefix blocked"), frame.clone(), Blocked).block(f.net));
            t.run(Case::new(name("everything blocked"), frame.clone(), Blocked).block(f.any));
            t.run(Case::new(name("host allowed"), frame.clone(), Allowlisted).allow(f.host));
            t.run(
                Case::new(
                    name("padded to 60+ bytes"),
                    packet.clone().padding(18).build(),
                    Passed,
                )
                .block(f.other),
            );
            t.run(
                Case::new(
                    name("padded, blocked"),
                    packet.clone().padding(18).build(),
                    Blocked,
                )
                .block(f.net),
            );
            t.run(Case::new(
                name("no payload"),
                packet.payload(&[]).build(),
                Passed,
            ));
        }
        // The other family's ICMP, and transports the program does not know,
        // are not checked: a 1-byte body passes.
        let foreign_icmp = if f.src.is_ipv4() { 58 } else { 1 };
        for (what, number) in [
            ("foreign icmp", foreign_icmp),
            ("gre", 47),
            ("sctp", 132),
            ("experimental 253", 253),
            ("no next header 59", 59),
        ] {
            let frame = f.packet().protocol(number).payload(&[0xee]).build();
            t.run(Case::new(
                format!("{} {what}, 1 byte", f.name),
                frame.clone(),
                Passed,
            ));
            t.run(Case::new(format!("{} {what}, blocked", f.name), frame, Blocked).block(f.host));
        }
        // A transport header exactly as long as its minimum.
        for (l4, packet) in f.transports() {
            let frame = packet.payload(&[]).build();
            let len = frame.len();
            t.run(Case::new(
                format!("{} {l4} header one byte short", f.name),
                frame.truncated_ip(len - 1),
                Malformed,
            ));
        }
    }
    // The family matters: a rule of one family never matches the other.
    let tcp4 = FAMILIES[0].packet().tcp(1, 2).build();
    let tcp6 = FAMILIES[1].packet().tcp(1, 2).build();
    t.run(Case::new("v4 frame, v6 /0 blocked", tcp4.clone(), Passed).block("::/0"));
    t.run(Case::new("v6 frame, v4 /0 blocked", tcp6.clone(), Passed).block("0.0.0.0/0"));
    t.run(
        Case::new("v4 frame, v6 /0 allowed, v4 blocked", tcp4, Blocked)
            .allow("::/0")
            .block("198.18.1.10"),
    );
    t.run(
        Case::new("v6 frame, v4 /0 allowed, v6 blocked", tcp6, Blocked)
            .allow("0.0.0.0/0")
            .block("2001:2:0:1::a"),
    );
    t.finish();
}

#[test]
fn tcp_header_lengths() {
    let mut t = Table::load("tcp");
    for f in &FAMILIES {
        let tcp = f.packet().tcp(1, 2).payload(b"data").build();
        let l4 = tcp.layer(Layer::Tcp).unwrap().start;
        for data_offset in 0..5u8 {
            let frame = tcp.clone().set(l4 + 12, &[data_offset << 4]);
            t.run(Case::new(
                format!("{} tcp data offset {data_offset}", f.name),
                frame.clone(),
                Malformed,
            ));
            t.run(
                Case::new(
                    format!("{} tcp data offset {data_offset}, blocked", f.name),
                    frame,
                    Blocked,
                )
                .block(f.net),
            );
        }
        // 4 bytes of payload: a data offset of 6 fits, 7 does not.
        for (data_offset, reason) in [(6u8, Passed), (7, Malformed), (15, Malformed)] {
            let frame = tcp.clone().set(l4 + 12, &[data_offset << 4]);
            t.run(Case::new(
                format!(
                    "{} tcp data offset {data_offset} with 4 payload bytes",
                    f.name
                ),
                frame,
                reason,
            ));
        }
        let mut header = etherparse::TcpHeader::new(1, 2, 3, 4);
        header
            .set_options(&[
                etherparse::TcpOptionElement::MaximumSegmentSize(1460),
                etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
                etherparse::TcpOptionElement::WindowScale(7),
            ])
            .unwrap();
        let frame = f.packet().tcp_header(header).build();
        t.run(Case::new(
            format!("{} tcp with options", f.name),
            frame.clone(),
            Passed,
        ));
        let len = frame.len();
        t.run(Case::new(
            format!("{} tcp options cut short", f.name),
            frame.truncated_ip(len - 1),
            Malformed,
        ));
    }
    t.finish();
}

#[test]
fn vlan_tags() {
    let mut t = Table::load("vlan");
    for f in &FAMILIES {
        let n = f.name;
        let tcp = f.packet().tcp(1, 2).payload(b"tagged");
        let shapes: [(&str, Packet); 5] = [
            ("802.1Q", tcp.clone().vlan(100)),
            ("802.1ad", tcp.clone().tag(TPID_8021AD, 100)),
            ("QinQ 802.1ad+802.1Q", tcp.clone().qinq(100, 200)),
            ("802.1Q+802.1Q", tcp.clone().vlan(100).vlan(200)),
            (
                "802.1ad+802.1ad",
                tcp.clone().tag(TPID_8021AD, 1).tag(TPID_8021AD, 2),
            ),
        ];
        for (shape, packet) in shapes {
            let frame = packet.build();
            t.run(Case::new(
                format!("{n} {shape} clean"),
                frame.clone(),
                Passed,
            ));
            t.run(Case::new(format!("{n} {shape} blocked"), frame.clone(), Blocked).block(f.host));
            t.run(
                Case::new(format!("{n} {shape} allowed"), frame.clone(), Allowlisted)
                    .allow(f.net)
                    .block(f.host),
            );
            let len = frame.len();
            t.run(
                Case::new(
                    format!("{n} {shape} short tcp, blocked"),
                    frame.clone().truncated_ip(len - 7 - 1),
                    Blocked,
                )
                .block(f.net),
            );
            t.run(Case::new(
                format!("{n} {shape} short tcp"),
                frame.truncated_ip(len - 7 - 1),
                Malformed,
            ));
        }
        for (shape, packet) in [
            ("three 802.1Q", tcp.clone().vlan(1).vlan(2).vlan(3)),
            ("QinQ + 802.1Q", tcp.clone().qinq(1, 2).vlan(3)),
            ("802.1Q + QinQ", tcp.clone().vlan(1).qinq(2, 3)),
            ("four tags", tcp.clone().qinq(1, 2).qinq(3, 4)),
        ] {
            let frame = packet.build();
            t.run(Case::new(format!("{n} {shape}"), frame.clone(), Malformed));
            t.run(
                Case::new(format!("{n} {shape}, blocked"), frame.clone(), Malformed).block(f.any),
            );
            t.run(Case::new(format!("{n} {shape}, allowed"), frame, Malformed).allow(f.any));
        }
        // 0x9100 is an old QinQ TPID the program does not walk: not IP.
        let frame = tcp.clone().tag(0x9100, 5).build();
        t.run(Case::new(format!("{n} 0x9100 tag"), frame, NotIp).block(f.any));
        // Truncated tags.
        for (shape, packet) in [
            ("802.1Q", tcp.clone().vlan(7)),
            ("QinQ", tcp.clone().qinq(7, 8)),
        ] {
            let frame = packet.build();
            let ip = frame.l3().unwrap();
            for cut in 14..ip {
                t.run(
                    Case::new(
                        format!("{n} {shape} cut at {cut}"),
                        frame.clone().truncated(cut),
                        Malformed,
                    )
                    .block(f.any),
                );
            }
        }
    }
    let arp = Packet::arp(v4(1, 10), v4(0, 1));
    t.run(Case::new("arp in 802.1Q", arp.clone().vlan(3).build(), NotIp).block("0.0.0.0/0"));
    t.run(Case::new("arp in QinQ", arp.clone().qinq(3, 4).build(), NotIp).block("0.0.0.0/0"));
    t.run(Case::new(
        "arp in three tags",
        arp.qinq(3, 4).vlan(5).build(),
        Malformed,
    ));
    t.finish();
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn ipv4_options_and_fragments() {
    let mut t = Table::load("ipv4");
    let (src, dst) = (v4(1, 10), v4(0, 1));
    let host = "198.18.1.10";
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let mut long = [0x01u8; 40]; // NOPs
    long[39] = 0x00; // EOL
    for (what, options) in [
        ("router alert", &router_alert[..]),
        ("nop nop nop eol", &[1, 1, 1, 0][..]),
        ("40 bytes", &long[..]),
    ] {
        for (l4, packet) in [
            ("tcp", Packet::ipv4(src, dst).tcp(1, 2)),
            ("udp", Packet::ipv4(src, dst).udp(1, 2)),
            ("icmp", Packet::ipv4(src, dst).icmp_echo()),
        ] {
            let frame = packet.ipv4_options(options).payload(b"opts").build();
            t.run(Case::new(
                format!("options {what} {l4}"),
                frame.clone(),
                Passed,
            ));
            t.run(
                Case::new(
                    format!("options {what} {l4}, blocked"),
                    frame.clone(),
                    Blocked,
                )
                .block(host),
            );
            t.run(
                Case::new(
                    format!("options {what} {l4}, allowed"),
                    frame.clone(),
                    Allowlisted,
                )
                .allow(host)
                .block(host),
            );
            let l4_start = frame.layers()[2].1.start;
            t.run(Case::new(
                format!("options {what} {l4}, no room for {l4}"),
                frame.clone().truncated_ip(l4_start + 4),
                Malformed,
            ));
            t.run(
                Case::new(
                    format!("options {what} {l4}, no room for {l4}, blocked"),
                    frame.truncated_ip(l4_start + 4),
                    Blocked,
                )
                .block(host),
            );
        }
    }

    // Fragments. The first fragment (offset 0) carries the transport
    // header and is checked; later ones carry none and pass.
    let first = Packet::ipv4(src, dst)
        .tcp(1, 2)
        .payload(&[7; 32])
        .fragment(0, true)
        .build();
    t.run(Case::new("first fragment, MF", first.clone(), Passed));
    t.run(Case::new("first fragment, blocked", first.clone(), Blocked).block(host));
    let l4 = first.layer(Layer::Tcp).unwrap().start;
    t.run(Case::new(
        "first fragment, tcp cut",
        first.clone().truncated_ip(l4 + 10),
        Malformed,
    ));
    t.run(
        Case::new(
            "first fragment, tcp cut, blocked",
            first.truncated_ip(l4 + 10),
            Blocked,
        )
        .block(host),
    );
    for (offset, more) in [(1, true), (1, false), (185, true), (0x1fff, false)] {
        for (what, packet) in [
            (
                "3 bytes of udp",
                Packet::ipv4(src, dst).protocol(17).payload(&[1, 2, 3]),
            ),
            (
                "1 byte of tcp",
                Packet::ipv4(src, dst).protocol(6).payload(&[1]),
            ),
            ("no bytes of icmp", Packet::ipv4(src, dst).protocol(1)),
            ("a whole tcp header", Packet::ipv4(src, dst).tcp(1, 2)),
        ] {
            let frame = packet.fragment(offset, more).build();
            let name = format!("later fragment offset {offset} MF {more}, {what}");
            t.run(Case::new(name.clone(), frame.clone(), Passed));
            t.run(Case::new(format!("{name}, blocked"), frame.clone(), Blocked).block(host));
            t.run(Case::new(format!("{name}, allowed"), frame, Allowlisted).allow("198.18.0.0/15"));
        }
    }
    // The DF and MF flags are no fragment offset.
    let frame = Packet::ipv4(src, dst).tcp(1, 2).build();
    let l3 = frame.l3().unwrap();
    let df_mf = frame.set(l3 + 6, &[0x60, 0]).with_ipv4_checksum();
    let len = df_mf.len();
    t.run(Case::new(
        "DF+MF, offset 0, tcp cut",
        df_mf.truncated_ip(len - 1),
        Malformed,
    ));
    // The reserved flag neither.
    let evil = Packet::ipv4(src, dst)
        .tcp(1, 2)
        .build()
        .set(l3 + 6, &[0x80, 0]);
    let len = evil.len();
    t.run(Case::new(
        "evil bit, tcp cut",
        evil.truncated_ip(len - 1),
        Malformed,
    ));
    t.finish();
}

#[test]
fn ipv6_extension_headers() {
    let mut t = Table::load("ipv6 ext");
    let (src, dst) = (v6(1, 10), v6(0, 1));
    let host = "2001:2:0:1::a";
    let base = || Packet::ipv6(src, dst);
    let singles = [
        ("hop-by-hop", Ext::HOP_BY_HOP),
        ("hop-by-hop 3 units", Ext::HopByHop { units: 3 }),
        ("routing", Ext::ROUTING),
        ("routing 2 units", Ext::Routing { units: 2 }),
        ("fragment (atomic)", Ext::FRAGMENT),
        (
            "fragment first, MF",
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ),
        ("destination options", Ext::DEST_OPTS),
        ("destination options 5 units", Ext::DestOpts { units: 5 }),
        ("auth", Ext::AUTH),
        ("auth without ICV", Ext::Auth { icv_words: 0 }),
        ("auth 3 ICV words", Ext::Auth { icv_words: 3 }),
    ];
    for (what, ext) in singles {
        for (l4, packet) in [
            ("tcp", base().tcp(1, 2)),
            ("udp", base().udp(1, 2)),
            ("icmpv6", base().icmpv6_echo()),
        ] {
            let frame = packet.ext(ext).payload(b"ext").build();
            let name = format!("{what} then {l4}");
            t.run(Case::new(name.clone(), frame.clone(), Passed));
            t.run(Case::new(format!("{name}, blocked"), frame.clone(), Blocked).block(host));
            let l4_start = frame.layers()[3].1.start;
            for keep in [0, 4] {
                t.run(Case::new(
                    format!("{name}, {keep} bytes of {l4}"),
                    frame.clone().truncated_ip(l4_start + keep),
                    Malformed,
                ));
                t.run(
                    Case::new(
                        format!("{name}, {keep} bytes of {l4}, blocked"),
                        frame.clone().truncated_ip(l4_start + keep),
                        Blocked,
                    )
                    .block(host),
                );
            }
        }
        // The extension header itself cut short.
        let frame = base().ext(ext).tcp(1, 2).build();
        let ext_range = frame.layers()[2].1.clone();
        for keep in [0, 1, 2, 7, ext_range.len() - 1] {
            t.run(Case::new(
                format!("{what} cut to {keep} bytes"),
                frame.clone().truncated_ip(ext_range.start + keep),
                Malformed,
            ));
            t.run(
                Case::new(
                    format!("{what} cut to {keep} bytes, blocked"),
                    frame.clone().truncated_ip(ext_range.start + keep),
                    Blocked,
                )
                .block(host),
            );
        }
        // The header ends exactly where the packet does, announcing nothing
        // or a transport header that is not there.
        let frame = base().ext(ext).build();
        t.run(Case::new(format!("{what}, no next header"), frame, Passed));
        let frame = base().ext(ext).protocol(6).build();
        t.run(Case::new(
            format!("{what}, tcp announced, absent"),
            frame,
            Malformed,
        ));
    }
    t.finish();
}

#[test]
fn ipv6_extension_chains() {
    let mut t = Table::load("ipv6 chains");
    let (src, dst) = (v6(1, 10), v6(0, 1));
    let host = "2001:2:0:1::a";
    let base = || Packet::ipv6(src, dst);
    // A later fragment: nothing after it is looked at.
    for offset in [1, 100, 0x1fff] {
        for more in [false, true] {
            let frame = base()
                .exts([Ext::HOP_BY_HOP, Ext::Fragment { offset, more }])
                .protocol(6)
                .payload(&[0xff; 3])
                .build();
            let name = format!("later fragment {offset} MF {more}, 3 bytes of tcp");
            t.run(Case::new(name.clone(), frame.clone(), Passed));
            t.run(Case::new(format!("{name}, blocked"), frame, Blocked).block(host));
            // Even a bogus header after it.
            let frame = base()
                .exts([Ext::Fragment { offset, more }, Ext::HopByHop { units: 30 }])
                .protocol(6)
                .build();
            let len = frame.len();
            t.run(Case::new(
                format!("later fragment {offset} MF {more}, then a cut hop-by-hop"),
                frame.truncated_ip(len - 8),
                Passed,
            ));
        }
    }
    // Chains.
    let chain = [
        Ext::HOP_BY_HOP,
        Ext::DEST_OPTS,
        Ext::ROUTING,
        Ext::FRAGMENT,
        Ext::AUTH,
        Ext::DestOpts { units: 1 },
    ];
    for (l4, packet) in [
        ("tcp", base().tcp(1, 2)),
        ("udp", base().udp(1, 2)),
        ("icmpv6", base().icmpv6_echo()),
        ("unknown 253", base().protocol(253).payload(&[1])),
    ] {
        let frame = packet.exts(chain).build();
        t.run(Case::new(
            format!("chain of 6 then {l4}"),
            frame.clone(),
            Passed,
        ));
        t.run(Case::new(format!("chain of 6 then {l4}, blocked"), frame, Blocked).block(host));
    }
    let frame = base().exts(chain).tcp(1, 2).build();
    for (i, (layer, range)) in frame.layers().iter().enumerate().skip(2) {
        for at in [range.start, range.start + 1, range.end - 1] {
            t.run(Case::new(
                format!("chain of 6 then tcp, cut in {layer} #{i} at {at}"),
                frame.clone().truncated_ip(at),
                Malformed,
            ));
        }
    }
    t.finish();
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn ipv6_extension_limit() {
    let mut t = Table::load("ipv6 limit");
    let (src, dst) = (v6(1, 10), v6(0, 1));
    let host = "2001:2:0:1::a";
    let base = || Packet::ipv6(src, dst);
    // The walk stops after 8 extension headers: a chain still going is
    // malformed (a rule or a guard could not see what it carries, and the
    // host would deliver it); the lists still decide first.
    let long = |n: usize, ext: Ext| base().exts(std::iter::repeat_n(ext, n)).tcp(1, 2).build();
    for ext in [Ext::DEST_OPTS, Ext::HOP_BY_HOP, Ext::AUTH, Ext::FRAGMENT] {
        let e = ext.number();
        for n in [7, 8] {
            let frame = long(n, ext);
            let len = frame.len();
            t.run(Case::new(
                format!("{n} x ext{e} then tcp"),
                frame.clone(),
                Passed,
            ));
            t.run(Case::new(
                format!("{n} x ext{e} then tcp cut"),
                frame.truncated_ip(len - 1),
                Malformed,
            ));
        }
        for n in [9, 12, 20] {
            let frame = long(n, ext);
            let len = frame.len();
            t.run(Case::new(
                format!("{n} x ext{e} then tcp"),
                frame.clone(),
                Malformed,
            ));
            t.run(Case::new(
                format!("{n} x ext{e} then tcp cut"),
                frame.clone().truncated_ip(len - 1),
                Malformed,
            ));
            t.run(Case::new(format!("{n} x ext{e}, blocked"), frame.clone(), Blocked).block(host));
            t.run(
                Case::new(format!("{n} x ext{e}, allowed"), frame.clone(), Allowlisted).allow(host),
            );
            t.run(
                Case::new(
                    format!("{n} x ext{e} cut, blocked"),
                    frame.truncated_ip(len - 1),
                    Blocked,
                )
                .block(host),
            );
        }
    }
    // The 9th header makes the chain malformed, cut short or not.
    let frame = long(9, Ext::DEST_OPTS);
    let ninth = frame.layers()[10].1.start;
    t.run(Case::new(
        "9th ext header cut",
        frame.clone().truncated_ip(ninth + 1),
        Malformed,
    ));
    t.run(Case::new(
        "8th ext header cut",
        frame.truncated_ip(ninth - 1),
        Malformed,
    ));
    // Hop-by-hop after other headers is walked like any other.
    let frame = base()
        .exts([Ext::DEST_OPTS, Ext::HOP_BY_HOP])
        .udp(1, 2)
        .build();
    t.run(Case::new("dstopts then hop-by-hop then udp", frame, Passed));
    // An unknown next header after a chain.
    let frame = base()
        .exts([Ext::HOP_BY_HOP, Ext::ROUTING])
        .protocol(143)
        .build();
    t.run(Case::new(
        "chain then ethernet-in-ipv6 (143), empty",
        frame,
        Passed,
    ));
    // A length byte that runs past the packet.
    let frame = base().ext(Ext::HOP_BY_HOP).tcp(1, 2).build();
    let hbh = frame.layers()[2].1.start;
    for len_byte in [1u8, 255] {
        t.run(Case::new(
            format!(
                "hop-by-hop claims {} bytes",
                (usize::from(len_byte) + 1) * 8
            ),
            frame.clone().set(hbh + 1, &[len_byte]),
            Malformed,
        ));
    }
    // Claiming 24 bytes swallows the TCP header: 8 + 20 = 28 bytes left,
    // the next header (TCP) starts 4 bytes before the end.
    t.run(Case::new(
        "hop-by-hop swallows most of tcp",
        frame.clone().set(hbh + 1, &[2]),
        Malformed,
    ));
    // ... unless the packet goes on (payload counts, padding does not). The
    // payload bytes read as a TCP header with data offset 5.
    let padded = base()
        .ext(Ext::HOP_BY_HOP)
        .tcp(1, 2)
        .payload(&[0x50; 16])
        .build();
    t.run(Case::new(
        "hop-by-hop grown into the payload",
        padded.set(hbh + 1, &[2]),
        Passed,
    ));
    let padded = base().ext(Ext::HOP_BY_HOP).tcp(1, 2).padding(64).build();
    t.run(Case::new(
        "hop-by-hop grown into the ethernet padding",
        padded.set(hbh + 1, &[3]),
        Malformed,
    ));
    t.finish();
}

/// Base frames for the truncation cases, and the address they come from.
fn truncation_frames() -> Vec<(&'static str, Frame, &'static str)> {
    let (s4, d4, h4) = (v4(1, 10), v4(0, 1), "198.18.1.10");
    let (s6, d6, h6) = (v6(1, 10), v6(0, 1), "2001:2:0:1::a");
    vec![
        (
            "v4 tcp",
            Packet::ipv4(s4, d4).tcp(1, 2).payload(b"x").build(),
            h4,
        ),
        (
            "v4 udp",
            Packet::ipv4(s4, d4).udp(1, 2).payload(b"x").build(),
            h4,
        ),
        (
            "v4 icmp",
            Packet::ipv4(s4, d4).icmp_echo().payload(b"x").build(),
            h4,
        ),
        (
            "v4 options tcp",
            Packet::ipv4(s4, d4)
                .ipv4_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
                .tcp(1, 2)
                .payload(b"x")
                .build(),
            h4,
        ),
        (
            "v4 802.1Q udp",
            Packet::ipv4(s4, d4).vlan(9).udp(1, 2).payload(b"x").build(),
            h4,
        ),
        (
            "v6 tcp",
            Packet::ipv6(s6, d6).tcp(1, 2).payload(b"x").build(),
            h6,
        ),
        (
            "v6 udp",
            Packet::ipv6(s6, d6).udp(1, 2).payload(b"x").build(),
            h6,
        ),
        (
            "v6 icmpv6",
            Packet::ipv6(s6, d6).icmpv6_echo().payload(b"x").build(),
            h6,
        ),
        (
            "v6 QinQ ext chain tcp",
            Packet::ipv6(s6, d6)
                .qinq(9, 10)
                .exts([
                    Ext::HOP_BY_HOP,
                    Ext::ROUTING,
                    Ext::FRAGMENT,
                    Ext::AUTH,
                    Ext::DEST_OPTS,
                ])
                .tcp(1, 2)
                .payload(b"x")
                .build(),
            h6,
        ),
    ]
}

#[test]
fn truncation() {
    let mut t = Table::load("truncation");
    for (name, frame, host) in truncation_frames() {
        let l3 = frame.l3().unwrap();
        let ip_header_end = l3
            + frame
                .layers()
                .iter()
                .find(|(l, _)| matches!(l, Layer::Ipv4 | Layer::Ipv6))
                .unwrap()
                .1
                .len();
        for (cut_name, at) in frame.cuts() {
            if at < 14 {
                continue; // below BPF_PROG_TEST_RUN's minimum: see too_short
            }
            // Cut, with the IP length claiming more than there is: the
            // network layer is malformed, whatever the lists say.
            let cut = frame.clone().truncated(at);
            t.run(Case::new(
                format!("{name} cut at {cut_name}"),
                cut.clone(),
                Malformed,
            ));
            t.run(
                Case::new(
                    format!("{name} cut at {cut_name}, blocked"),
                    cut.clone(),
                    Malformed,
                )
                .block(host),
            );
            t.run(
                Case::new(format!("{name} cut at {cut_name}, allowed"), cut, Malformed).allow(host),
            );
            // Cut with the IP length shrunk to match: the IP packet is
            // fine, what is inside it is short.
            if at >= ip_header_end {
                let short = frame.clone().truncated_ip(at);
                t.run(Case::new(
                    format!("{name} ip packet ends at {cut_name}"),
                    short.clone(),
                    Malformed,
                ));
                t.run(
                    Case::new(
                        format!("{name} ip packet ends at {cut_name}, blocked"),
                        short.clone(),
                        Blocked,
                    )
                    .block(host),
                );
                t.run(
                    Case::new(
                        format!("{name} ip packet ends at {cut_name}, allowed"),
                        short,
                        Allowlisted,
                    )
                    .allow(host)
                    .block(host),
                );
            }
        }
        // The whole frame, and the IP packet without its 1-byte payload.
        t.run(Case::new(format!("{name} whole"), frame.clone(), Passed));
        let len = frame.len();
        t.run(Case::new(
            format!("{name} without payload"),
            frame.truncated_ip(len - 1),
            Passed,
        ));
    }
    t.finish();
}

/// Frames shorter than an Ethernet header are malformed to the policy, but
/// `BPF_PROG_TEST_RUN` refuses them (the kernel wants at least 14 bytes),
/// so the program never sees one there; nor does a real NIC deliver one.
#[test]
fn too_short() {
    require_root();
    let mut filter = Filter::load(LoadOptions::default()).expect("load");
    let frame = Packet::ipv4(v4(1, 10), v4(0, 1)).tcp(1, 2).build();
    for len in 0..14 {
        let cut = &frame.bytes()[..len];
        assert_eq!(reference::decide(cut, &[], &[]), Malformed, "{len} bytes");
        assert!(
            filter.test_run(cut, 1).is_err(),
            "the kernel ran a {len}-byte frame"
        );
    }
    let counters = filter.counters().unwrap();
    assert!(
        counters.by_reason.values().all(|c| c.packets == 0),
        "{counters:?}"
    );
    println!("fixtures/too_short: 14 cases ran, 0 failed");
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn malformed_ip_headers() {
    let mut t = Table::load("ip headers");
    let (src, dst, host, net) = (v4(1, 10), v4(0, 1), "198.18.1.10", "198.18.0.0/15");
    let tcp = Packet::ipv4(src, dst)
        .tcp(1, 2)
        .payload(b"0123456789")
        .build();
    let l3 = tcp.l3().unwrap();
    let ip_len = tcp.len() - l3; // 20 + 20 + 10
    for ihl in 0..5 {
        let frame = tcp.clone().set_ihl(ihl).with_ipv4_checksum();
        t.run(Case::new(format!("ihl {ihl}"), frame.clone(), Malformed));
        t.run(Case::new(format!("ihl {ihl}, blocked"), frame.clone(), Malformed).block(host));
        t.run(Case::new(format!("ihl {ihl}, allowed"), frame, Malformed).allow(host));
    }
    // IHL 6 reads 4 bytes of TCP as options, leaving 16 bytes of TCP
    // header plus 10 of payload; what is read as the data offset is the
    // checksum's high byte, set to 5 words here (26 >= 20).
    let l4 = tcp.layer(Layer::Tcp).unwrap().start;
    let ihl6 = tcp.clone().set_ihl(6).set(l4 + 16, &[0x50]);
    t.run(Case::new("ihl 6", ihl6.clone(), Passed));
    t.run(Case::new(
        "ihl 6, data offset 15",
        ihl6.set(l4 + 16, &[0xf0]),
        Malformed,
    ));
    // IHL 15: 60 bytes of header, more than the 50-byte packet.
    t.run(
        Case::new(
            "ihl 15 over total length",
            tcp.clone().set_ihl(15),
            Malformed,
        )
        .block(host),
    );
    // IHL 12: a 48-byte header in a 50-byte packet leaves 2 bytes of TCP.
    t.run(Case::new(
        "ihl 12, tcp squeezed",
        tcp.clone().set_ihl(12),
        Malformed,
    ));
    t.run(
        Case::new(
            "ihl 12, tcp squeezed, blocked",
            tcp.clone().set_ihl(12),
            Blocked,
        )
        .block(net),
    );
    let len16 = |n: usize| u16::try_from(n).unwrap();
    for (what, total, reason) in [
        ("0", 0, Malformed),
        ("19 (< ihl*4)", 19, Malformed),
        ("header only", 20, Malformed),
        ("header + 19 (tcp short)", 39, Malformed),
        ("header + tcp (payload as padding)", 40, Passed),
        ("exact", ip_len, Passed),
        ("one too long", ip_len + 1, Malformed),
        ("65535", 65535, Malformed),
    ] {
        let frame = tcp
            .clone()
            .set_ipv4_total_len(len16(total))
            .with_ipv4_checksum();
        let blocked = if (20..=ip_len).contains(&total) {
            Blocked
        } else {
            Malformed
        };
        t.run(Case::new(
            format!("v4 total length {what}"),
            frame.clone(),
            reason,
        ));
        t.run(Case::new(format!("v4 total length {what}, blocked"), frame, blocked).block(host));
    }
    // Versions.
    for version in [0, 5, 6, 15] {
        let frame = tcp.clone().set_ip_version(version);
        t.run(
            Case::new(
                format!("ipv4 ethertype, version {version}"),
                frame,
                Malformed,
            )
            .block(host),
        );
    }
    let (s6, d6, h6) = (v6(1, 10), v6(0, 1), "2001:2:0:1::a");
    let tcp6 = Packet::ipv6(s6, d6)
        .tcp(1, 2)
        .payload(b"0123456789")
        .build();
    for version in [0, 4, 7, 15] {
        let frame = tcp6.clone().set_ip_version(version);
        t.run(
            Case::new(
                format!("ipv6 ethertype, version {version}"),
                frame,
                Malformed,
            )
            .block(h6),
        );
    }
    // An IPv4 header behind the IPv6 ethertype and the other way round.
    let v4_as_v6 = tcp.clone().set(12, &[0x86, 0xdd]);
    t.run(Case::new(
        "ipv4 header, ipv6 ethertype",
        v4_as_v6,
        Malformed,
    ));
    let v6_as_v4 = tcp6.clone().set(12, &[0x08, 0x00]);
    t.run(Case::new(
        "ipv6 header, ipv4 ethertype",
        v6_as_v4,
        Malformed,
    ));
    // IPv6 payload length.
    let payload = tcp6.len() - 14 - 40; // 30
    for (what, len, reason, blocked) in [
        ("0 (tcp absent)", 0, Malformed, Blocked),
        ("19 (tcp short)", 19, Malformed, Blocked),
        ("20 (payload as padding)", 20, Passed, Blocked),
        ("exact", payload, Passed, Blocked),
        ("one too long", payload + 1, Malformed, Malformed),
        ("65535", 65535, Malformed, Malformed),
    ] {
        let frame = tcp6.clone().set_ipv6_payload_len(len16(len));
        t.run(Case::new(
            format!("v6 payload length {what}"),
            frame.clone(),
            reason,
        ));
        t.run(Case::new(format!("v6 payload length {what}, blocked"), frame, blocked).block(h6));
    }
    // Ethernet padding after a short packet is fine.
    let padded = Packet::ipv4(src, dst).udp(1, 2).padding(30).build();
    t.run(Case::new("v4 udp with ethernet padding", padded, Passed));
    let padded = Packet::ipv6(s6, d6).udp(1, 2).padding(30).build();
    t.run(Case::new("v6 udp with ethernet padding", padded, Passed));
    t.finish();
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn lists() {
    let mut t = Table::load("lists");
    let tcp = |src: IpAddr| {
        let dst: IpAddr = if src.is_ipv4() {
            v4(0, 1).into()
        } else {
            v6(0, 1).into()
        };
        Packet::ip(src, dst).tcp(1, 2).build()
    };
    let a: IpAddr = v4(1, 10).into();
    let b: IpAddr = v4(1, 11).into();
    let far: IpAddr = v4_far(200, 1).into();
    let a6: IpAddr = v6(1, 10).into();
    let b6: IpAddr = v6(1, 11).into();

    // An allowlisted address inside a blocked prefix.
    t.run(
        Case::new("allowed host in blocked /24", tcp(a), Allowlisted)
            .allow("198.18.1.10")
            .block("198.18.1.0/24"),
    );
    t.run(
        Case::new("its neighbour in the blocked /24", tcp(b), Blocked)
            .allow("198.18.1.10")
            .block("198.18.1.0/24"),
    );
    t.run(
        Case::new("allowed host in blocked /64", tcp(a6), Allowlisted)
            .allow("2001:2:0:1::a")
            .block("2001:2:0:1::/64"),
    );
    t.run(
        Case::new("its neighbour in the blocked /64", tcp(b6), Blocked)
            .allow("2001:2:0:1::a")
            .block("2001:2:0:1::/64"),
    );
    // Allowed prefix inside a blocked one, and blocked host inside an
    // allowed prefix (the allowlist wins).
    t.run(
        Case::new("allowed /24 in blocked /15", tcp(a), Allowlisted)
            .allow("198.18.1.0/24")
            .block("198.18.0.0/15"),
    );
    t.run(
        Case::new(
            "outside the allowed /24, inside the blocked /15",
            tcp(far),
            Blocked,
        )
        .allow("198.18.1.0/24")
        .block("198.18.0.0/15"),
    );
    t.run(
        Case::new("blocked host in allowed /24", tcp(a), Allowlisted)
            .allow("198.18.1.0/24")
            .block("198.18.1.10"),
    );
    t.run(
        Case::new("blocked /128 in allowed /48", tcp(a6), Allowlisted)
            .allow("2001:2::/48")
            .block("2001:2:0:1::a"),
    );
    t.run(
        Case::new("same host on both lists", tcp(a), Allowlisted)
            .allow("198.18.1.10")
            .block("198.18.1.10"),
    );
    t.run(
        Case::new("allow /0 beats block /32", tcp(a), Allowlisted)
            .allow("0.0.0.0/0")
            .block("198.18.1.10"),
    );
    t.run(
        Case::new("allow ::/0 beats block /128", tcp(a6), Allowlisted)
            .allow("::/0")
            .block("2001:2:0:1::a"),
    );
    // /0, /32, /128.
    for src in [a, b, far] {
        t.run(Case::new(format!("{src} under block /0"), tcp(src), Blocked).block("0.0.0.0/0"));
    }
    for src in [a6, b6] {
        t.run(Case::new(format!("{src} under block ::/0"), tcp(src), Blocked).block("::/0"));
    }
    t.run(Case::new("block /32 exact", tcp(a), Blocked).block("198.18.1.10"));
    t.run(Case::new("block /32 of the neighbour", tcp(a), Passed).block("198.18.1.11"));
    t.run(Case::new("block /128 exact", tcp(a6), Blocked).block("2001:2:0:1::a"));
    t.run(Case::new("block /128 of the neighbour", tcp(a6), Passed).block("2001:2:0:1::b"));
    t.run(Case::new("block /31 holding it", tcp(a), Blocked).block("198.18.1.10/31"));
    t.run(Case::new("block /31 next door", tcp(b), Passed).block("198.18.1.12/31"));
    t.run(Case::new("block /127 holding it", tcp(a6), Blocked).block("2001:2:0:1::a/127"));
    t.run(Case::new("block /127 next door", tcp(b6), Passed).block("2001:2:0:1::c/127"));
    t.run(Case::new("block /15 over both halves", tcp(far), Blocked).block("198.18.0.0/15"));
    t.run(Case::new("block /16 of the other half", tcp(far), Passed).block("198.18.0.0/16"));
    t.run(Case::new("block 1/1 (not 198.x)", tcp(a), Passed).block("0.0.0.0/1"));
    t.run(Case::new("block 128/1", tcp(a), Blocked).block("128.0.0.0/1"));
    t.run(Case::new("block 2000::/3", tcp(a6), Blocked).block("2000::/3"));
    // Overlapping blocks: any match blocks; the hit goes to the exact entry,
    // else the longest prefix.
    t.run(
        Case::new("overlapping /0 /16 /24 /32", tcp(a), Blocked)
            .block("0.0.0.0/0")
            .block("198.18.0.0/16")
            .block("198.18.1.0/24")
            .block("198.18.1.10")
            .hit(List::Block, "198.18.1.10"),
    );
    t.run(
        Case::new("overlapping /0 /16 /24", tcp(b), Blocked)
            .block("0.0.0.0/0")
            .block("198.18.0.0/16")
            .block("198.18.1.0/24")
            .block("198.18.1.10")
            .hit(List::Block, "198.18.1.0/24"),
    );
    t.run(
        Case::new("overlapping v6 /0 /48 /64 /128", tcp(b6), Blocked)
            .block("::/0")
            .block("2001:2::/48")
            .block("2001:2:0:1::/64")
            .block("2001:2:0:1::a")
            .hit(List::Block, "2001:2:0:1::/64"),
    );
    t.run(
        Case::new("overlapping allows", tcp(a6), Allowlisted)
            .allow("::/0")
            .allow("2001:2:0:1::/64")
            .allow("2001:2:0:1::a")
            .block("::/0")
            .hit(List::Allow, "2001:2:0:1::a"),
    );
    t.run(
        Case::new("allow /24 and block /32 /16", tcp(a), Allowlisted)
            .allow("198.18.1.0/24")
            .block("198.18.0.0/16")
            .block("198.18.1.10"),
    );
    // ARP is not IP, whatever the lists say about its sender.
    let arp = Packet::arp(v4(1, 10), v4(0, 1)).build();
    t.run(Case::new("arp from a blocked host", arp.clone(), NotIp).block("198.18.1.10"));
    t.run(Case::new("arp under block /0", arp.clone(), NotIp).block("0.0.0.0/0"));
    t.run(Case::new("arp from an allowed host", arp, NotIp).allow("198.18.1.10"));
    let lldp = Packet::ethertype(0x88cc, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]).build();
    t.run(
        Case::new("lldp", lldp, NotIp)
            .block("0.0.0.0/0")
            .block("::/0"),
    );
    // A malformed transport from a listed source: the list decides.
    let short = tcp(a);
    let len = short.len();
    let short = short.truncated_ip(len - 10);
    t.run(Case::new("short tcp, clean", short.clone(), Malformed).block("198.18.2.0/24"));
    t.run(Case::new("short tcp, allowed", short.clone(), Allowlisted).allow("198.18.1.10"));
    t.run(Case::new("short tcp, blocked", short, Blocked).block("198.18.1.10"));
    // Many rules at once, none matching.
    let mut case = Case::new("64 rules, none matching", tcp(a), Passed);
    for i in 0..32u8 {
        case = case
            .block(&format!("198.19.{i}.0/24"))
            .allow(&format!("2001:2:0:{i:x}::/64"));
    }
    t.run(case);
    // Rules come and go between cases: the same frame, rule removed.
    t.run(Case::new("rule gone again", tcp(a), Passed));
    t.finish();
}

/// A dropped frame that the sampler picks reaches the ring buffer with its
/// first bytes: all of a frame up to 128 bytes, the first 128 of a longer
/// one, at every length around the copy's bounds. A frame that passes is
/// not sampled.
#[test]
fn drop_samples_carry_the_frame_head() {
    require_root();
    let mut filter = Filter::load(LoadOptions::default()).expect("load");
    filter
        .block("198.18.2.0/24".parse().expect("a prefix"))
        .expect("block");
    filter
        .observer()
        .set_sampling(Sampling {
            every: 1,
            cap: u32::MAX,
        })
        .expect("sampling on");
    let mut ring = filter.take_samples().expect("the sample ring buffer");
    let mut samples = |filter: &mut Filter, frame: &[u8]| {
        filter.test_run(frame, 1).expect("test run");
        let mut found = Vec::new();
        while let Some(record) = ring.next() {
            found.push(Sample::decode(&record).expect("a whole sample"));
        }
        found
    };
    let mut checked = 0;
    // Payload bytes that differ at every offset, so that a byte copied to
    // the wrong place shows.
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
    for payload_len in [0, 1, 7, 8, 9, 31, 63, 64, 65, 85, 86, 87, 100, 200, 300] {
        let frame = Packet::ipv4(v4(2, 7), v4(0, 1))
            .udp(40_000, 9)
            .payload(&payload[..payload_len])
            .build()
            .into_bytes();
        let taken = samples(&mut filter, &frame);
        assert_eq!(taken.len(), 1, "one sample of a {}-byte frame", frame.len());
        let sample = &taken[0];
        assert_eq!(sample.reason, Blocked, "{}-byte frame", frame.len());
        assert_eq!(sample.len as usize, frame.len(), "the frame's length");
        assert_eq!(
            sample.data,
            frame[..frame.len().min(128)],
            "the head of a {}-byte frame",
            frame.len()
        );
        checked += 1;
    }
    let clean = Packet::ipv4(v4(3, 7), v4(0, 1))
        .udp(40_000, 9)
        .build()
        .into_bytes();
    assert!(
        samples(&mut filter, &clean).is_empty(),
        "a passed frame is not sampled"
    );
    println!("fixtures/drop_samples_carry_the_frame_head: {checked} frames sampled");
}
