//! `spacefilter capture`: sampled dropped frames written to a pcap file
//! that tcpdump and Wireshark open. Each frame holds its first
//! [`SAMPLE_BYTES`] bytes (the snap length) and its length on the wire.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use spacefilter_common::SAMPLE_BYTES;

use crate::api::SampleView;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {message}")]
    Pcap { path: PathBuf, message: String },
    #[error("the daemon sent a sample whose bytes are not hex: {0}")]
    Garbled(String),
}

/// A pcap file being written.
pub struct PcapOut {
    path: PathBuf,
    /// Unbuffered: each frame reaches the file as it is written, so the
    /// file is whole whenever the capture stops.
    writer: PcapWriter<File>,
    written: u64,
}

impl PcapOut {
    /// Creates (or truncates) `path` and writes the pcap header: Ethernet,
    /// microsecond timestamps, snap length [`SAMPLE_BYTES`].
    pub fn create(path: &Path) -> Result<Self, CaptureError> {
        let file = File::create(path).map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            source,
        })?;
        let header = PcapHeader {
            snaplen: u32::try_from(SAMPLE_BYTES).expect("a small constant"),
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(file, header).map_err(|err| CaptureError::Pcap {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            written: 0,
        })
    }

    /// Appends one sample.
    pub fn write(&mut self, sample: &SampleView) -> Result<(), CaptureError> {
        let data =
            hex::decode(&sample.data).map_err(|err| CaptureError::Garbled(err.to_string()))?;
        let packet = PcapPacket::new(
            Duration::from_micros(sample.at_us),
            sample
                .len
                .max(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            &data,
        );
        self.writer
            .write_packet(&packet)
            .map_err(|err| CaptureError::Pcap {
                path: self.path.clone(),
                message: err.to_string(),
            })?;
        self.written += 1;
        Ok(())
    }

    /// Frames written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }
}
