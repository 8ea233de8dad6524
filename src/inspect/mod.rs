//! Looking inside disks without mounting: partition tables (and, later, file systems, OS, boot
//! modes).

pub mod signature;
pub mod table;
