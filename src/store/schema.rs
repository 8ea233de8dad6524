//! The catalog's schema, as numbered migrations. `PRAGMA user_version` holds the number of
//! migrations applied; each runs in the transaction that bumps it.
//!
//! The schema states the store's rules itself, so that no code path can break them:
//! - a block device mapping references its snapshot with `ON DELETE RESTRICT`: a snapshot used by
//!   an image cannot be deleted;
//! - a snapshot references its blob (the data, stored once per ContentDigest) the same way;
//! - an image is inserted `pending` and becomes `available` only with a mapping for its root
//!   device (triggers); an available image's mappings and root device cannot change;
//! - IDs have Outscale's shapes (`snap-`/`ami-` and 8 hex digits), enumerations their values,
//!   sizes Outscale's limits (`VolumeSize` 1 to 14,901 GiB, `Iops` at most 13,000), account IDs
//!   12 digits.

/// The migrations, in order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[&str] = &[V1];

const V1: &str = r#"
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY
        CHECK (length(digest) = 74 AND digest GLOB 'sha256-4m:*'
               AND substr(digest, 11) NOT GLOB '*[^0-9a-f]*'),
    file TEXT NOT NULL UNIQUE CHECK (file = replace(digest, ':', '-') || '.qcow2'),
    virtual_size INTEGER NOT NULL CHECK (virtual_size > 0),
    file_size INTEGER NOT NULL CHECK (file_size > 0),
    allocated_bytes INTEGER NOT NULL CHECK (allocated_bytes >= 0),
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*')
) STRICT;

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY
        CHECK (length(id) = 13 AND id GLOB 'snap-*' AND substr(id, 6) NOT GLOB '*[^0-9a-f]*'),
    digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE RESTRICT,
    volume_size INTEGER NOT NULL CHECK (volume_size BETWEEN 1 AND 14901),
    description TEXT,
    origin TEXT NOT NULL,
    creation_date TEXT NOT NULL
) STRICT;
CREATE INDEX snapshots_by_digest ON snapshots(digest);

CREATE TABLE images (
    id TEXT PRIMARY KEY
        CHECK (length(id) = 12 AND id GLOB 'ami-*' AND substr(id, 5) NOT GLOB '*[^0-9a-f]*'),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 3 AND 128),
    description TEXT,
    architecture TEXT CHECK (architecture IN ('i386', 'x86_64')),
    root_device_name TEXT NOT NULL CHECK (root_device_name GLOB '/dev/*'),
    state TEXT NOT NULL CHECK (state IN ('pending', 'available', 'failed')),
    global_permission INTEGER NOT NULL DEFAULT 0 CHECK (global_permission IN (0, 1)),
    creation_date TEXT NOT NULL,
    copied_from TEXT,
    extra TEXT,
    work TEXT,
    CHECK (state <> 'available' OR architecture IS NOT NULL)
) STRICT;

CREATE TABLE boot_modes (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    mode TEXT NOT NULL CHECK (mode IN ('uefi', 'legacy')),
    PRIMARY KEY (image_id, mode)
) STRICT;

CREATE TABLE block_device_mappings (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL CHECK (position >= 0),
    device_name TEXT NOT NULL CHECK (device_name GLOB '/dev/*'),
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,
    volume_size INTEGER NOT NULL CHECK (volume_size BETWEEN 1 AND 14901),
    volume_type TEXT NOT NULL CHECK (volume_type IN ('standard', 'gp2', 'io1')),
    iops INTEGER CHECK (iops IS NULL OR iops BETWEEN 1 AND 13000),
    delete_on_vm_deletion INTEGER NOT NULL CHECK (delete_on_vm_deletion IN (0, 1)),
    PRIMARY KEY (image_id, device_name),
    UNIQUE (image_id, position)
) STRICT;
CREATE INDEX mappings_by_snapshot ON block_device_mappings(snapshot_id);

CREATE TABLE launch_permissions (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL CHECK (length(account_id) = 12 AND account_id NOT GLOB '*[^0-9]*'),
    PRIMARY KEY (image_id, account_id)
) STRICT;

CREATE TABLE image_tags (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    value TEXT NOT NULL CHECK (length(value) <= 255),
    PRIMARY KEY (image_id, key)
) STRICT;

-- Where a source file's content was already stored: its identity (device, inode, size, mtime,
-- ctime) to the blob of its content, so that a second snapshot of an unchanged file reads
-- nothing.
CREATE TABLE source_cache (
    identity TEXT PRIMARY KEY,
    digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE
) STRICT;
CREATE INDEX source_cache_by_digest ON source_cache(digest);

CREATE TRIGGER available_images_have_their_root
BEFORE UPDATE OF state ON images
WHEN NEW.state = 'available' AND NOT EXISTS (
    SELECT 1 FROM block_device_mappings
    WHERE image_id = NEW.id AND device_name = NEW.root_device_name)
BEGIN
    SELECT RAISE(ABORT, 'an image without its root snapshot cannot be available');
END;

CREATE TRIGGER images_are_made_pending
BEFORE INSERT ON images
WHEN NEW.state <> 'pending'
BEGIN
    SELECT RAISE(ABORT, 'an image is made pending, then becomes available with its mappings');
END;

CREATE TRIGGER available_images_keep_their_root
BEFORE UPDATE OF root_device_name ON images
WHEN OLD.state = 'available'
BEGIN
    SELECT RAISE(ABORT, 'the root device of an available image cannot change');
END;

CREATE TRIGGER available_images_keep_their_mappings_as_they_are
BEFORE UPDATE ON block_device_mappings
WHEN (SELECT state FROM images WHERE id = OLD.image_id) = 'available'
  OR (SELECT state FROM images WHERE id = NEW.image_id) = 'available'
BEGIN
    SELECT RAISE(ABORT, 'the mappings of an available image cannot change');
END;

CREATE TRIGGER available_images_keep_their_mappings
BEFORE DELETE ON block_device_mappings
WHEN (SELECT state FROM images WHERE id = OLD.image_id) = 'available'
BEGIN
    SELECT RAISE(ABORT, 'the mappings of an available image cannot be removed');
END;
"#;
