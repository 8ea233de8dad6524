mod error;
mod read;
mod seek;

pub use error::{Error, ErrorKind, Result};
pub use read::Read;
pub use seek::{Seek, SeekFrom};
