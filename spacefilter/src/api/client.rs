//! The client side of the control socket, used by the CLI verbs.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Envelope, PROTOCOL_VERSION, Request, Response,
    listing::{self, EachEntry, Listed, ReadError},
};
use crate::net::List;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the spacefilter daemon is not running: nothing answers on {path}; start it with `spacefilter run --iface IFACE`, or point --socket at its socket"
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "permission denied on {path}: only root, and members of the daemon's --socket-group, may talk to it"
    )]
    NotAllowed { path: PathBuf },
    #[error("talking to the daemon on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon closed the connection without answering")]
    Closed,
    #[error("the daemon sent something that is not a valid reply: {0}")]
    Garbled(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The start of a reply line that a timeout cut short.
    partial: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                ClientError::NotAllowed {
                    path: path.to_path_buf(),
                }
            } else {
                ClientError::NotRunning {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
        })
    }

    fn io(&self) -> impl FnOnce(io::Error) -> ClientError + use<> {
        let path = self.path.clone();
        move |source| ClientError::Io { path, source }
    }

    pub fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            request,
        })
        .expect("requests always serialize");
        line.push(b'\n');
        let io = self.io();
        self.writer.write_all(&line).map_err(io)
    }

    /// The next reply line.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        let io = self.io();
        self.reader.get_ref().set_read_timeout(None).map_err(io)?;
        loop {
            if let Some(response) = self.recv_within(None)? {
                return Ok(response);
            }
        }
    }

    /// The next reply line, or `None` if none came within `timeout` (the
    /// part of a line read by then is kept for the next call).
    pub fn recv_within(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Response>, ClientError> {
        let Some(line) = self.read_line(timeout)? else {
            return Ok(None);
        };
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|err| ClientError::Garbled(err.to_string()))
    }

    /// Asks for the entries (of one list, or of all), and hands each to
    /// `each` as soon as it arrives: a listing of any length is printed
    /// while the daemon still sends it, and never held whole.
    pub fn list(
        &mut self,
        only: Option<List>,
        each: &mut EachEntry<'_>,
    ) -> Result<Listed, ClientError> {
        self.send(Request::List { list: only })?;
        let io = self.io();
        self.reader.get_ref().set_read_timeout(None).map_err(io)?;
        let pending = std::mem::take(&mut self.partial);
        listing::read_streamed(&mut self.reader, pending, each).map_err(|err| match err {
            ReadError::Io(source) => ClientError::Io {
                path: self.path.clone(),
                source,
            },
            ReadError::Closed => ClientError::Closed,
            ReadError::Garbled(message) => ClientError::Garbled(message),
        })
    }

    /// The next reply line, or `None` if none came within `timeout`.
    fn read_line(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, ClientError> {
        let io = self.io();
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(io)?;
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        if self.partial.last() != Some(&b'\n') {
            // The daemon hung up in the middle of a line.
            return Err(ClientError::Closed);
        }
        Ok(Some(std::mem::take(&mut self.partial)))
    }

    /// Sends `request` and returns its final reply, handing `progress`
    /// replies to `on_progress` on the way.
    pub fn call(
        &mut self,
        request: Request,
        on_progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response, ClientError> {
        self.send(request)?;
        loop {
            match self.recv()? {
                Response::Progress { done, total } => on_progress(done, total),
                other => return Ok(other),
            }
        }
    }
}
