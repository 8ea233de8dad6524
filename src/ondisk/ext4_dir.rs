//! ext4 directories, encoded: entries, leaf blocks with their checksum tails, the directory
//! hash and hashed (`dir_index`, "htree") directories.
