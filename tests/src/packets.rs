//! Test frames, built from etherparse's headers.
//!
//! [`Packet`] is a fluent builder: pick the network layer
//! ([`Packet::ipv4`], [`Packet::ipv6`], [`Packet::arp`],
//! [`Packet::ethertype`]), then add VLAN tags, IPv4 options or fragment
//! fields, IPv6 extension headers, a transport header and a payload, and
//! [`build`](Packet::build) a [`Frame`]. Every header is an etherparse
//! header serialised by etherparse, with lengths, next-header chains and
//! checksums filled in, so a built frame is well formed unless asked
//! otherwise.
//!
//! A [`Frame`] knows where each of its headers starts, so that it can be
//! broken on purpose: cut at any offset ([`Frame::truncated`], lengths left
//! lying), cut with the IP length fields shrunk to match
//! ([`Frame::truncated_ip`], a short transport header inside a consistent
//! IP packet), or have single fields overwritten ([`Frame::set_ihl`],
//! [`Frame::set_ipv4_total_len`], ...). That byte surgery is the only place
//! bytes are written by hand.
//!
//! Addresses come from the benchmarking ranges 198.18.0.0/15 (RFC 2544) and
//! `2001:2::/48` (RFC 5180): see [`v4`] and [`v6`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IcmpEchoHeader,
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpAuthHeader, IpFragOffset, IpNumber,
    Ipv4Header, Ipv4HeaderSlice, Ipv4Options, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp, ip_number,
};

/// Source MAC address of every built frame (locally administered).
pub const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
/// Destination MAC address of every built frame.
pub const MAC_DST: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

/// 802.1Q customer tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service (`QinQ` outer) tag.
pub const TPID_8021AD: u16 = 0x88A8;

/// `198.18.<third>.<fourth>`, inside 198.18.0.0/15.
#[must_use]
pub const fn v4(third: u8, fourth: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, third, fourth)
}

/// `198.19.<third>.<fourth>`, the other half of 198.18.0.0/15.
#[must_use]
pub const fn v4_far(third: u8, fourth: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, third, fourth)
}

/// `2001:2:0:<subnet>::<host>`, inside `2001:2::/48`.
#[must_use]
pub const fn v6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0x0002, 0, subnet, 0, 0, 0, host)
}

/// One IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (0), `(units + 1) * 8` bytes of `PadN`.
    HopByHop { units: u8 },
    /// Routing header (43), experimental type 253 with no segments left,
    /// `(units + 1) * 8` bytes.
    Routing { units: u8 },
    /// Fragment header (44): offset in 8-byte units, and the M flag.
    Fragment { offset: u16, more: bool },
    /// Destination options (60), `(units + 1) * 8` bytes of `PadN`.
    DestOpts { units: u8 },
    /// Authentication header (51) with an ICV of `icv_words` 32-bit words:
    /// `12 + 4 * icv_words` bytes.
    Auth { icv_words: u8 },
}

impl Ext {
    /// The shortest hop-by-hop options header.
    pub const HOP_BY_HOP: Ext = Ext::HopByHop { units: 0 };
    /// The shortest routing header.
    pub const ROUTING: Ext = Ext::Routing { units: 0 };
    /// The shortest destination options header.
    pub const DEST_OPTS: Ext = Ext::DestOpts { units: 0 };
    /// An atomic fragment (offset 0, last fragment).
    pub const FRAGMENT: Ext = Ext::Fragment {
        offset: 0,
        more: false,
    };
    /// An authentication header with one ICV word (16 bytes, 8-aligned).
    pub const AUTH: Ext = Ext::Auth { icv_words: 1 };

    /// The next-header number that announces this header.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => ip_number::IPV6_HOP_BY_HOP.0,
            Ext::Routing { .. } => ip_number::IPV6_ROUTE.0,
            Ext::Fragment { .. } => ip_number::IPV6_FRAG.0,
            Ext::DestOpts { .. } => ip_number::IPV6_DEST_OPTIONS.0,
            Ext::Auth { .. } => ip_number::AUTH.0,
        }
    }

    /// Serialises the header, announcing `next` after it.
    fn to_bytes(self, next: IpNumber) -> Vec<u8> {
        match self {
            Ext::HopByHop { units } | Ext::DestOpts { units } => {
                Ipv6RawExtHeader::new_raw(next, &pad_n(units))
                    .expect("PadN payloads are 6 + 8n bytes")
                    .to_bytes()
                    .to_vec()
            }
            Ext::Routing { units } => {
                // Routing type 253 (RFC 4727 experiment), segments left 0:
                // a receiver skips it.
                let mut payload = vec![0u8; 6 + 8 * usize::from(units)];
                payload[0] = 253;
                Ipv6RawExtHeader::new_raw(next, &payload)
                    .expect("6 + 8n bytes")
                    .to_bytes()
                    .to_vec()
            }
            Ext::Fragment { offset, more } => Ipv6FragmentHeader::new(
                next,
                IpFragOffset::try_new(offset).expect("fragment offset fits 13 bits"),
                more,
                0x5f17,
            )
            .to_bytes()
            .to_vec(),
            Ext::Auth { icv_words } => {
                let icv = vec![0xa5; 4 * usize::from(icv_words)];
                IpAuthHeader::new(next, 0x0000_1000, 1, &icv)
                    .expect("ICV is a whole number of words")
                    .to_bytes()
                    .to_vec()
            }
        }
    }
}

/// Option payload of `(units + 1) * 8 - 2` bytes: one `PadN` option.
fn pad_n(units: u8) -> Vec<u8> {
    let len = 6 + 8 * usize::from(units);
    let mut payload = vec![0u8; len];
    payload[0] = 1; // PadN
    payload[1] = u8::try_from(len - 2).expect("at most 31 units");
    payload
}

#[derive(Clone, Debug)]
enum Net {
    V4(Box<Ipv4Header>),
    V6 { header: Ipv6Header, exts: Vec<Ext> },
    Arp(Box<ArpPacket>),
    Other { ether_type: u16, body: Vec<u8> },
}

#[derive(Clone, Debug)]
enum L4 {
    /// No transport header: IPv4 protocol 253 (experimental), IPv6 next
    /// header 59 (no next header), unless set with [`Packet::protocol`].
    None(Option<u8>),
    Tcp(Box<TcpHeader>),
    Udp {
        src: u16,
        dst: u16,
    },
    Icmpv4(Icmpv4Type),
    Icmpv6(Icmpv6Type),
}

/// What a span of a [`Frame`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Vlan,
    Ipv4,
    Ipv6,
    /// An IPv6 extension header, by next-header number.
    Ext(u8),
    Arp,
    Tcp,
    Udp,
    Icmpv4,
    Icmpv6,
    /// The body of a frame with an ethertype the builder does not know.
    Body,
    Payload,
    /// Ethernet padding after the IP packet.
    Padding,
}

impl Layer {
    /// Whether this span is a header (rather than payload or padding).
    #[must_use]
    pub fn is_header(self) -> bool {
        !matches!(self, Layer::Body | Layer::Payload | Layer::Padding)
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Ext(number) => write!(f, "ext{number}"),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

/// A frame under construction. See the [module docs](self).
#[derive(Clone, Debug)]
#[must_use]
pub struct Packet {
    tags: Vec<(u16, u16)>,
    net: Net,
    l4: L4,
    payload: Vec<u8>,
    padding: usize,
}

impl Packet {
    fn with_net(net: Net) -> Self {
        Self {
            tags: Vec::new(),
            net,
            l4: L4::None(None),
            payload: Vec::new(),
            padding: 0,
        }
    }

    /// An IPv4 packet, TTL 64, no transport header yet.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let mut header = Ipv4Header::new(0, 64, ip_number::UDP, src.octets(), dst.octets())
            .expect("an empty payload fits");
        header.dont_fragment = false;
        header.identification = 0x1e57;
        Self::with_net(Net::V4(Box::new(header)))
    }

    /// An IPv6 packet, hop limit 64, no transport header yet.
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self::with_net(Net::V6 {
            header: Ipv6Header {
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
                ..Ipv6Header::default()
            },
            exts: Vec::new(),
        })
    }

    /// An IP packet of the family of `src` (`dst` must match).
    ///
    /// # Panics
    /// If the families differ.
    pub fn ip(src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Self::ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => Self::ipv6(s, d),
            _ => panic!("mixed address families: {src} and {dst}"),
        }
    }

    /// An ARP request from `sender` asking for `target`.
    pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &MAC_SRC,
            &sender.octets(),
            &[0; 6],
            &target.octets(),
        )
        .expect("Ethernet/IPv4 address sizes");
        Self::with_net(Net::Arp(Box::new(arp)))
    }

    /// A frame of any other ethertype, with `body` after the Ethernet
    /// header (and tags).
    pub fn ethertype(ether_type: u16, body: &[u8]) -> Self {
        Self::with_net(Net::Other {
            ether_type,
            body: body.to_vec(),
        })
    }

    /// Adds an 802.1Q tag inside the tags so far.
    pub fn vlan(self, id: u16) -> Self {
        self.tag(TPID_8021Q, id)
    }

    /// Adds a `QinQ` pair inside the tags so far: an 802.1ad service tag
    /// around an 802.1Q customer tag.
    pub fn qinq(self, outer: u16, inner: u16) -> Self {
        self.tag(TPID_8021AD, outer).tag(TPID_8021Q, inner)
    }

    /// Adds a tag with any TPID inside the tags so far.
    ///
    /// # Panics
    /// If `id` does not fit 12 bits.
    pub fn tag(mut self, tpid: u16, id: u16) -> Self {
        VlanId::try_new(id).expect("VLAN ids are 12 bits");
        self.tags.push((tpid, id));
        self
    }

    /// A TCP header with the SYN flag.
    pub fn tcp(self, src: u16, dst: u16) -> Self {
        let mut header = TcpHeader::new(src, dst, 0x5eed_0001, 64240);
        header.syn = true;
        self.tcp_header(header)
    }

    /// A TCP header of the caller's making (options, flags).
    pub fn tcp_header(mut self, header: TcpHeader) -> Self {
        self.l4 = L4::Tcp(Box::new(header));
        self
    }

    pub fn udp(mut self, src: u16, dst: u16) -> Self {
        self.l4 = L4::Udp { src, dst };
        self
    }

    /// An ICMP (v4) echo request. In an IPv6 packet this is next header 1,
    /// which is not `ICMPv6`.
    pub fn icmp_echo(mut self) -> Self {
        self.l4 = L4::Icmpv4(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }));
        self
    }

    /// An `ICMPv6` echo request (in an IPv4 packet: protocol 58, not ICMP).
    pub fn icmpv6_echo(mut self) -> Self {
        self.l4 = L4::Icmpv6(Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }));
        self
    }

    /// No transport header; the IP packet announces `number` (protocol or
    /// next header) and carries only the payload.
    pub fn protocol(mut self, number: u8) -> Self {
        self.l4 = L4::None(Some(number));
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// `len` bytes of payload, counting up.
    pub fn payload_len(self, len: usize) -> Self {
        #[expect(clippy::cast_possible_truncation, reason = "wraps on purpose")]
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        self.payload(&payload)
    }

    /// Zero bytes after the IP packet, as Ethernet pads short frames.
    pub fn padding(mut self, len: usize) -> Self {
        self.padding = len;
        self
    }

    /// IPv4 options (a multiple of 4 bytes, at most 40).
    ///
    /// # Panics
    /// On an IPv6 packet, or options of a bad length.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        let Net::V4(header) = &mut self.net else {
            panic!("IPv4 options on a non-IPv4 packet");
        };
        header.options =
            Ipv4Options::try_from(options).expect("options are a multiple of 4 bytes, at most 40");
        self
    }

    /// Makes the IPv4 packet a fragment: `offset` in 8-byte units, `more`
    /// the MF flag.
    ///
    /// # Panics
    /// On an IPv6 packet (use [`Packet::ext`] with [`Ext::Fragment`]).
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        let Net::V4(header) = &mut self.net else {
            panic!("IPv4 fragment fields on a non-IPv4 packet");
        };
        header.fragment_offset = IpFragOffset::try_new(offset).expect("13 bits");
        header.more_fragments = more;
        header.dont_fragment = false;
        self
    }

    /// Appends an IPv6 extension header to the chain.
    ///
    /// # Panics
    /// On an IPv4 packet.
    pub fn ext(mut self, ext: Ext) -> Self {
        let Net::V6 { exts, .. } = &mut self.net else {
            panic!("IPv6 extension header on a non-IPv6 packet");
        };
        exts.push(ext);
        self
    }

    /// Appends several IPv6 extension headers.
    pub fn exts(self, exts: impl IntoIterator<Item = Ext>) -> Self {
        exts.into_iter().fold(self, Packet::ext)
    }

    /// The source address of an IP packet, or the sender of an ARP request.
    #[must_use]
    pub fn source(&self) -> Option<IpAddr> {
        match &self.net {
            Net::V4(header) => Some(Ipv4Addr::from(header.source).into()),
            Net::V6 { header, .. } => Some(Ipv6Addr::from(header.source).into()),
            Net::Arp(arp) => <[u8; 4]>::try_from(arp.sender_protocol_addr())
                .ok()
                .map(|a| Ipv4Addr::from(a).into()),
            Net::Other { .. } => None,
        }
    }

    /// Serialises the frame.
    ///
    /// # Panics
    /// If the packet cannot be serialised (a payload too big for its
    /// length fields).
    pub fn build(&self) -> Frame {
        let mut frame = Frame {
            bytes: Vec::new(),
            layers: Vec::new(),
            ip: None,
        };
        let net_type = match &self.net {
            Net::V4(_) => EtherType::IPV4,
            Net::V6 { .. } => EtherType::IPV6,
            Net::Arp(_) => EtherType::ARP,
            Net::Other { ether_type, .. } => EtherType(*ether_type),
        };
        // Each ethertype announces the next tag, the last one the network
        // layer.
        let mut types = self
            .tags
            .iter()
            .map(|&(tpid, _)| EtherType(tpid))
            .chain([net_type]);
        let eth = Ethernet2Header {
            source: MAC_SRC,
            destination: MAC_DST,
            ether_type: types.next().expect("at least the network type"),
        };
        frame.push(Layer::Ethernet, &eth.to_bytes());
        for (&(_, id), ether_type) in self.tags.iter().zip(types) {
            let tag = SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).expect("checked in tag()"),
                ether_type,
            };
            frame.push(Layer::Vlan, &tag.to_bytes());
        }
        match &self.net {
            Net::V4(header) => self.build_v4(&mut frame, header),
            Net::V6 { header, exts } => self.build_v6(&mut frame, header, exts),
            Net::Arp(arp) => frame.push(Layer::Arp, &arp.to_bytes()),
            Net::Other { body, .. } => frame.push(Layer::Body, body),
        }
        if self.padding > 0 {
            frame.push(Layer::Padding, &vec![0; self.padding]);
        }
        frame
    }

    /// The transport header, its layer and number, with the checksum over
    /// `src`, `dst` and the payload.
    fn transport(&self, src: IpAddr, dst: IpAddr) -> (Option<(Layer, Vec<u8>)>, IpNumber) {
        let payload = &self.payload;
        let none = |v6: bool| if v6 { 59 } else { 253 };
        match (&self.l4, src, dst) {
            (L4::None(number), src, _) => (None, IpNumber(number.unwrap_or(none(src.is_ipv6())))),
            (L4::Tcp(header), src, dst) => {
                let mut header = (**header).clone();
                header.checksum = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        header.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        header.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                    }
                    _ => unreachable!("one family per packet"),
                }
                .expect("payload fits");
                (
                    Some((Layer::Tcp, header.to_bytes().to_vec())),
                    ip_number::TCP,
                )
            }
            (&L4::Udp { src: sp, dst: dp }, src, dst) => {
                let mut header = UdpHeader {
                    source_port: sp,
                    destination_port: dp,
                    length: u16::try_from(UdpHeader::LEN + payload.len()).expect("payload fits"),
                    checksum: 0,
                };
                header.checksum = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        header.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        header.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
                    }
                    _ => unreachable!("one family per packet"),
                }
                .expect("payload fits");
                (
                    Some((Layer::Udp, header.to_bytes().to_vec())),
                    ip_number::UDP,
                )
            }
            (L4::Icmpv4(icmp_type), ..) => {
                let header = Icmpv4Header::with_checksum(icmp_type.clone(), payload);
                (
                    Some((Layer::Icmpv4, header.to_bytes().to_vec())),
                    ip_number::ICMP,
                )
            }
            (L4::Icmpv6(icmp_type), src, dst) => {
                let to16 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                let header = Icmpv6Header::with_checksum(*icmp_type, to16(src), to16(dst), payload)
                    .expect("payload fits");
                (
                    Some((Layer::Icmpv6, header.to_bytes().to_vec())),
                    ip_number::IPV6_ICMP,
                )
            }
        }
    }

    fn build_v4(&self, frame: &mut Frame, header: &Ipv4Header) {
        let (l4, protocol) = self.transport(
            Ipv4Addr::from(header.source).into(),
            Ipv4Addr::from(header.destination).into(),
        );
        let mut header = header.clone();
        header.protocol = protocol;
        header
            .set_payload_len(l4.as_ref().map_or(0, |(_, b)| b.len()) + self.payload.len())
            .expect("payload fits");
        header.header_checksum = header.calc_header_checksum();
        let start = frame.bytes.len();
        frame.push(Layer::Ipv4, &header.to_bytes());
        frame.ip = Some((Layer::Ipv4, start..frame.bytes.len()));
        self.finish_ip(frame, l4);
    }

    fn build_v6(&self, frame: &mut Frame, header: &Ipv6Header, exts: &[Ext]) {
        let (l4, last) = self.transport(
            Ipv6Addr::from(header.source).into(),
            Ipv6Addr::from(header.destination).into(),
        );
        // Each header announces the next; the last one the transport.
        let numbers: Vec<IpNumber> = exts
            .iter()
            .map(|e| IpNumber(e.number()))
            .chain([last])
            .collect();
        let ext_bytes: Vec<(Layer, Vec<u8>)> = exts
            .iter()
            .zip(&numbers[1..])
            .map(|(ext, &next)| (Layer::Ext(ext.number()), ext.to_bytes(next)))
            .collect();
        let mut header = header.clone();
        header.next_header = numbers[0];
        header
            .set_payload_length(
                ext_bytes.iter().map(|(_, b)| b.len()).sum::<usize>()
                    + l4.as_ref().map_or(0, |(_, b)| b.len())
                    + self.payload.len(),
            )
            .expect("payload fits");
        let start = frame.bytes.len();
        frame.push(Layer::Ipv6, &header.to_bytes());
        frame.ip = Some((Layer::Ipv6, start..frame.bytes.len()));
        for (layer, bytes) in ext_bytes {
            frame.push(layer, &bytes);
        }
        self.finish_ip(frame, l4);
    }

    fn finish_ip(&self, frame: &mut Frame, l4: Option<(Layer, Vec<u8>)>) {
        if let Some((layer, bytes)) = l4 {
            frame.push(layer, &bytes);
        }
        if !self.payload.is_empty() {
            frame.push(Layer::Payload, &self.payload);
        }
    }
}

/// A built frame: its bytes and where each header lies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Frame {
    bytes: Vec<u8>,
    layers: Vec<(Layer, Range<usize>)>,
    /// The IP header's kind and where it was built (options included).
    ip: Option<(Layer, Range<usize>)>,
}

impl Frame {
    fn push(&mut self, layer: Layer, bytes: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.layers.push((layer, start..self.bytes.len()));
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Each span of the frame, in order (spans cut off by truncation are
    /// shortened or gone).
    #[must_use]
    pub fn layers(&self) -> &[(Layer, Range<usize>)] {
        &self.layers
    }

    /// The span of the first layer of this kind.
    #[must_use]
    pub fn layer(&self, kind: Layer) -> Option<Range<usize>> {
        self.layers
            .iter()
            .find(|(layer, _)| *layer == kind)
            .map(|(_, range)| range.clone())
    }

    /// Offset of the IP header.
    #[must_use]
    pub fn l3(&self) -> Option<usize> {
        self.ip.as_ref().map(|(_, range)| range.start)
    }

    /// Where the IP header (with IPv4 options) ends, if the frame still
    /// holds all of it.
    #[must_use]
    pub fn ip_header_end(&self) -> Option<usize> {
        self.ip
            .as_ref()
            .map(|(_, range)| range.end)
            .filter(|&end| end <= self.bytes.len())
    }

    /// Where to cut the frame to truncate each header: at its start, and in
    /// its middle, named like `ipv4+10`.
    #[must_use]
    pub fn cuts(&self) -> Vec<(String, usize)> {
        let mut cuts = Vec::new();
        for (layer, range) in &self.layers {
            if !layer.is_header() {
                continue;
            }
            cuts.push((format!("{layer}+0"), range.start));
            let mid = range.len() / 2;
            if mid > 0 {
                cuts.push((format!("{layer}+{mid}"), range.start + mid));
            }
            cuts.push((format!("{layer}+{}", range.len() - 1), range.end - 1));
        }
        cuts.dedup_by_key(|(_, at)| *at);
        cuts
    }

    /// Offsets of the fields that say how long or what something is: the
    /// ethertype, tag ethertypes, IPv4 IHL/total length/fragment/protocol,
    /// IPv6 payload length/next header, extension header lengths, the TCP
    /// data offset and the UDP length. As `(offset, width in bytes)`.
    #[must_use]
    pub fn fields(&self) -> Vec<(usize, usize)> {
        let mut fields = Vec::new();
        for (layer, range) in &self.layers {
            let s = range.start;
            let candidates: &[(usize, usize)] = match layer {
                Layer::Ethernet => &[(12, 2)],
                Layer::Vlan => &[(2, 2)],
                Layer::Ipv4 => &[(0, 1), (2, 2), (6, 2), (9, 1)],
                Layer::Ipv6 => &[(0, 1), (4, 2), (6, 1)],
                Layer::Ext(_) => &[(0, 1), (1, 1), (2, 2)],
                Layer::Tcp => &[(12, 1)],
                Layer::Udp => &[(4, 2)],
                _ => &[],
            };
            fields.extend(
                candidates
                    .iter()
                    .map(|&(at, width)| (s + at, width))
                    .filter(|&(at, width)| at + width <= range.end),
            );
        }
        fields
    }

    /// The frame cut to its first `len` bytes; length fields keep their
    /// values (and so claim more than there is).
    pub fn truncated(mut self, len: usize) -> Self {
        self.bytes.truncate(len);
        self.layers.retain_mut(|(_, range)| {
            range.end = range.end.min(len);
            range.start < range.end
        });
        self
    }

    /// The frame cut to its first `len` bytes, with the IP length field
    /// shrunk to match: a consistent IP packet whose contents stop short.
    ///
    /// # Panics
    /// If the cut is not past the fixed IP header (and IPv4 options).
    pub fn truncated_ip(self, len: usize) -> Self {
        let (kind, header) = self.ip.clone().expect("an IP frame");
        let l3 = header.start;
        assert!(
            len >= header.end && self.ip_header_end().is_some(),
            "truncated_ip({len}) cuts into the IP header at {header:?}"
        );
        let frame = self.truncated(len);
        let ip_len = u16::try_from(len - l3).expect("fits");
        match kind {
            Layer::Ipv4 => frame.set_ipv4_total_len(ip_len).with_ipv4_checksum(),
            _ => frame.set_ipv6_payload_len(ip_len - 40),
        }
    }

    /// Overwrites bytes at `offset`.
    ///
    /// # Panics
    /// If the bytes do not fit in the frame.
    pub fn set(mut self, offset: usize, bytes: &[u8]) -> Self {
        self.bytes[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn l3_expect(&self, kind: Layer) -> usize {
        match &self.ip {
            Some((k, range)) if *k == kind => range.start,
            _ => panic!("not a {kind} frame"),
        }
    }

    /// The frame with `bytes` appended (as Ethernet padding would be).
    pub fn padded(mut self, bytes: &[u8]) -> Self {
        self.push(Layer::Padding, bytes);
        self
    }

    /// Sets the IPv4 IHL field (header length in words), leaving the bytes
    /// as they are.
    pub fn set_ihl(self, ihl: u8) -> Self {
        let l3 = self.l3_expect(Layer::Ipv4);
        let byte = (self.bytes[l3] & 0xf0) | (ihl & 0x0f);
        self.set(l3, &[byte])
    }

    /// Sets the IP version nibble.
    pub fn set_ip_version(self, version: u8) -> Self {
        let l3 = self.l3().expect("an IP frame");
        let byte = (self.bytes[l3] & 0x0f) | (version << 4);
        self.set(l3, &[byte])
    }

    /// Sets the IPv4 total length field.
    pub fn set_ipv4_total_len(self, len: u16) -> Self {
        let l3 = self.l3_expect(Layer::Ipv4);
        self.set(l3 + 2, &len.to_be_bytes())
    }

    /// Sets the IPv6 payload length field.
    pub fn set_ipv6_payload_len(self, len: u16) -> Self {
        let l3 = self.l3_expect(Layer::Ipv6);
        self.set(l3 + 4, &len.to_be_bytes())
    }

    /// Recomputes the IPv4 header checksum (after surgery), if the header
    /// parses.
    pub fn with_ipv4_checksum(mut self) -> Self {
        let l3 = self.l3_expect(Layer::Ipv4);
        if let Some(Ok(slice)) = self.bytes.get(l3..).map(Ipv4HeaderSlice::from_slice) {
            let checksum = slice.to_header().calc_header_checksum();
            self.bytes[l3 + 10..l3 + 12].copy_from_slice(&checksum.to_be_bytes());
        }
        self
    }
}

impl From<Frame> for Vec<u8> {
    fn from(frame: Frame) -> Self {
        frame.into_bytes()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    /// The builder agrees byte for byte with etherparse's own
    /// `PacketBuilder` where that can build the frame.
    #[test]
    fn matches_etherparse_packet_builder() {
        let payload = b"spacefilter";
        let (s4, d4) = (v4(0, 1), v4(0, 2));
        let (s6, d6) = (v6(0, 1), v6(0, 2));
        let mut reference = Vec::new();
        PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
            .ipv4(s4.octets(), d4.octets(), 64)
            .udp(5353, 53)
            .write(&mut reference, payload)
            .unwrap();
        let mut ours = Packet::ipv4(s4, d4).udp(5353, 53).payload(payload).build();
        // PacketBuilder sets DF and identification 0.
        let l3 = ours.l3().unwrap();
        ours = ours.set(l3 + 4, &[0, 0, 0x40, 0]).with_ipv4_checksum();
        assert_eq!(ours.bytes(), reference);

        let mut reference = Vec::new();
        PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
            .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
            .ipv6(s6.octets(), d6.octets(), 64)
            .tcp(4000, 80, 0x5eed_0001, 64240)
            .syn()
            .write(&mut reference, payload)
            .unwrap();
        let ours = Packet::ipv6(s6, d6)
            .qinq(10, 20)
            .tcp(4000, 80)
            .payload(payload)
            .build();
        assert_eq!(ours.bytes(), reference);
    }

    #[test]
    fn extension_chains_parse() {
        let frame = Packet::ipv6(v6(0, 1), v6(0, 2))
            .exts([
                Ext::HOP_BY_HOP,
                Ext::DestOpts { units: 2 },
                Ext::ROUTING,
                Ext::FRAGMENT,
                Ext::AUTH,
            ])
            .udp(1, 2)
            .payload(b"x")
            .build();
        let sliced = SlicedPacket::from_ethernet(frame.bytes()).unwrap();
        assert!(matches!(sliced.transport, Some(TransportSlice::Udp(_))));
        assert_eq!(
            frame.layers().iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [
                Layer::Ethernet,
                Layer::Ipv6,
                Layer::Ext(0),
                Layer::Ext(60),
                Layer::Ext(43),
                Layer::Ext(44),
                Layer::Ext(51),
                Layer::Udp,
                Layer::Payload
            ]
        );
    }

    #[test]
    fn truncated_ip_keeps_lengths_consistent() {
        let frame = Packet::ipv4(v4(0, 1), v4(0, 2))
            .tcp(1, 2)
            .build()
            .truncated_ip(14 + 20 + 10);
        assert_eq!(frame.len(), 44);
        let header = Ipv4HeaderSlice::from_slice(&frame.bytes()[14..]).unwrap();
        assert_eq!(header.total_len(), 30);
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
    }
}
