//! Windows, recognised from what is on its NTFS volume, and whether sysprep generalized it.
//!
//! A volume holds Windows when it is NTFS and has both `Windows/System32/ntoskrnl.exe` (the
//! kernel) and `Windows/System32/config/SYSTEM` (the SYSTEM registry hive). Nothing else makes
//! a disk Windows: a `bootmgfw.efi` on an ESP can be a stray copy next to Linux.
//!
//! Read offline, from the hives (with [`crate::ondisk::regf`], which refuses dirty hives rather
//! than read a file whose last writes may only be in its transaction logs):
//! - the edition and version: `SOFTWARE\Microsoft\Windows NT\CurrentVersion` (`ProductName`,
//!   `EditionID`, `CurrentBuild`, `DisplayVersion`, else `ReleaseId` on Windows 10 before 20H2);
//!   display data only, never decisive;
//! - the processor architecture: `SYSTEM\ControlSetNNN\Control\Session Manager\Environment`
//!   `PROCESSOR_ARCHITECTURE`, NNN from `SYSTEM\Select\Current` (an offline hive has no
//!   `CurrentControlSet`: the kernel makes that link at boot). It only cross-checks
//!   ntoskrnl.exe's PE header, which is what the architecture is taken from;
//! - the sysprep state, see [`decide_sysprep`].

use super::binary::{self, Binary};
use crate::fs::{FileSystem, Kind};
use crate::manifest::SysprepState;
use crate::ondisk::regf::{Hive, Value};
use serde::Serialize;

/// The kernel: with the SYSTEM hive, what makes a volume Windows.
pub const KERNEL: &str = "/Windows/System32/ntoskrnl.exe";
/// The SYSTEM hive.
pub const SYSTEM_HIVE: &str = "/Windows/System32/config/SYSTEM";
/// The SOFTWARE hive.
pub const SOFTWARE_HIVE: &str = "/Windows/System32/config/SOFTWARE";
/// Where Windows Setup also writes `ImageState`, outside the registry ("Windows Setup States").
pub const STATE_INI: &str = "/Windows/Setup/State/State.ini";
/// The Windows Boot Manager for BIOS, and its boot configuration data, on the active partition.
pub const BOOTMGR: [&str; 2] = ["/bootmgr", "/Boot/BCD"];

/// Hives over this size are not read: real SOFTWARE hives are 50 to 150 MiB (the audit's cap,
/// `audit::MAX_HIVE`, is the same). The two hives are read one after the other, never both held.
const MAX_HIVE: u64 = 256 << 20;
/// State.ini is a few lines.
const MAX_STATE_INI: u64 = 64 << 10;
/// Strings from the registry are shown up to this many characters.
const MAX_TEXT: usize = 256;

/// Where the sysprep values are, for the evidence lines.
const STATE_KEY: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State";
const STATE_INI_NAME: &str = r"Windows\Setup\State\State.ini";

/// A Windows installation found on a volume.
#[derive(Debug, Clone, Serialize)]
pub struct Installation {
    /// `ProductName` (`Windows Server 2022 Datacenter`; Windows 11 still says `Windows 10`, so it
    /// is shown with the build, never corrected).
    pub product_name: Option<String>,
    /// `EditionID` (`ServerDatacenter`, `Professional`).
    pub edition: Option<String>,
    /// `DisplayVersion` (`21H2`), else `ReleaseId` (`1809`).
    pub version: Option<String>,
    /// `CurrentBuild` (`20348`).
    pub build: Option<String>,
    /// ntoskrnl.exe's PE header, when readable.
    pub kernel: Option<Binary>,
    /// `PROCESSOR_ARCHITECTURE` from the SYSTEM hive (`AMD64`, `x86`, `ARM64`).
    pub processor_architecture: Option<String>,
    /// The key it was read from (`SYSTEM\ControlSet001\Control\Session Manager\Environment`).
    pub processor_architecture_from: Option<String>,
    /// Whether sysprep generalized it, and why mkomi thinks so.
    pub sysprep: Sysprep,
}

/// The sysprep state of an installation and its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sysprep {
    /// `generalized`, `not-generalized` or `unknown`.
    pub state: SysprepState,
    /// The values read and where from, one line each.
    pub evidence: Vec<String>,
}

/// The SYSTEM hive's `Setup` values (at the hive's root, not under a control set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupValues {
    /// `SystemSetupInProgress`.
    pub system_setup_in_progress: Option<u32>,
    /// `SetupType`.
    pub setup_type: Option<u32>,
    /// `CmdLine`.
    pub cmd_line: Option<String>,
    /// `Setup\Status\SysprepStatus` `GeneralizationState`: shown, never decisive.
    pub generalization_state: Option<u32>,
}

/// What the sysprep decision reads. `Err` holds why a source could not be read; `Ok(None)` that
/// it does not have the value (or the file does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysprepInputs {
    /// The SYSTEM hive's `Setup` values.
    pub system: Result<SetupValues, String>,
    /// `ImageState` from the SOFTWARE hive.
    pub registry: Result<Option<String>, String>,
    /// `ImageState` from State.ini.
    pub state_ini: Result<Option<String>, String>,
}

/// What an `ImageState` value means for an image mkomi is asked to register.
///
/// Microsoft Learn, "Windows Setup States"
/// (<https://learn.microsoft.com/windows-hardware/manufacture/desktop/windows-setup-states>):
/// Setup records the state in `HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State`
/// `ImageState` and in `%WINDIR%\Setup\State\State.ini`. `IMAGE_STATE_COMPLETE` is an installed
/// system ("you must run sysprep /generalize" to deploy it elsewhere); of
/// `IMAGE_STATE_UNDEPLOYABLE` the page says "If queried offline, the image did not finish a
/// phase and will never be deployable"; the two `SPECIALIZE_RESEAL` states are already
/// specialized; the two `GENERALIZE_RESEAL` states are what `sysprep /generalize` leaves.
fn image_state_means(value: &str) -> Option<(SysprepState, Option<&'static str>)> {
    Some(match value.trim() {
        "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE" => (SysprepState::Generalized, None),
        "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT" => (
            SysprepState::Generalized,
            Some("it boots to audit mode (Administrator logged on), not to OOBE"),
        ),
        "IMAGE_STATE_COMPLETE"
        | "IMAGE_STATE_UNDEPLOYABLE"
        | "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE"
        | "IMAGE_STATE_SPECIALIZE_RESEAL_TO_AUDIT" => (SysprepState::NotGeneralized, None),
        _ => return None,
    })
}

fn show(v: Option<u32>) -> String {
    v.map_or_else(|| "absent".to_owned(), |n| n.to_string())
}

/// Decides the sysprep state (the decision table of the issue #17 research note, §3.4).
///
/// The documented signal is `ImageState` (its values read as Microsoft's "Windows Setup States"
/// describes them), from the SOFTWARE hive, else from State.ini; when both exist they must
/// agree. The SYSTEM hive's `Setup` values are a
/// cross-check: Microsoft KB 939857 (<https://mskb.pkisolutions.com/kb/939857>) documents
/// `HKLM\SYSTEM\Setup\CmdLine` ("which process is called by the Setup program") and `SetupType`
/// ("used by the Winlogon.exe process to determine whether the system is in Setup mode"); a
/// resealed image is armed for Setup at its next boot (`SystemSetupInProgress` 1, `SetupType`
/// non-zero), so `ImageState` saying generalized while Setup says a finished system (both 0) is
/// a contradiction, hence unknown. `SYSTEM\Setup\Status\SysprepStatus\GeneralizationState` is
/// undocumented by Microsoft (and set by hand to 7 to reset sysprep), so it is shown and never
/// decides. Every doubt — a dirty or unreadable hive, a missing or unrecognised value, sources
/// that disagree — is `unknown`, never `generalized`.
pub fn decide_sysprep(inputs: &SysprepInputs) -> Sysprep {
    let mut evidence = Vec::new();
    let unknown = |evidence| Sysprep {
        state: SysprepState::Unknown,
        evidence,
    };
    let setup = match &inputs.system {
        Ok(s) => s,
        Err(e) => {
            evidence.push(format!("SYSTEM hive: {e}"));
            return unknown(evidence);
        }
    };
    // ImageState's first source: a SOFTWARE hive that cannot be read (damaged, dirty: its
    // last writes may be only in its logs) leaves the state unknown, whatever State.ini says.
    let registry = match &inputs.registry {
        Ok(v) => v.clone(),
        Err(e) => {
            evidence.push(format!("SOFTWARE hive: {e}"));
            return unknown(evidence);
        }
    };
    // State.ini that exists but cannot be read may disagree with the registry: unknown.
    let ini = match &inputs.state_ini {
        Ok(v) => v.clone(),
        Err(e) => {
            evidence.push(format!("{STATE_INI_NAME}: {e}"));
            return unknown(evidence);
        }
    };
    if let Some(v) = &registry {
        evidence.push(format!("ImageState={v} ({STATE_KEY})"));
    } else if inputs.registry.is_ok() {
        evidence.push(format!("ImageState absent ({STATE_KEY})"));
    }
    if let Some(v) = &ini {
        evidence.push(format!("ImageState={v} ({STATE_INI_NAME})"));
    }
    evidence.push(format!(
        r"SYSTEM\Setup: SystemSetupInProgress={} SetupType={} CmdLine={}",
        show(setup.system_setup_in_progress),
        show(setup.setup_type),
        setup
            .cmd_line
            .as_deref()
            .map_or_else(|| "absent".to_owned(), |c| format!("\"{c}\""))
    ));
    if let Some(g) = setup.generalization_state {
        evidence.push(format!(
            r"SYSTEM\Setup\Status\SysprepStatus: GeneralizationState={g} (undocumented; not used to decide)"
        ));
    }
    let state = match (&registry, &ini) {
        (Some(r), Some(i)) if r.trim() != i.trim() => {
            evidence.push(format!(
                "ImageState disagrees: the registry says {r}, State.ini {i}"
            ));
            return unknown(evidence);
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => {
            evidence.push("no ImageState: the state Windows Setup records is unknown".into());
            return unknown(evidence);
        }
    };
    match image_state_means(state) {
        None => {
            evidence.push(format!("ImageState {state:?} is not a documented state"));
            unknown(evidence)
        }
        Some((SysprepState::Generalized, note)) => {
            // A resealed image runs Setup at its next boot: anything else contradicts ImageState
            // (values edited by hand, or lost), so the state is not known.
            let armed = setup.system_setup_in_progress == Some(1)
                && setup.setup_type.is_some_and(|t| t != 0);
            if !armed {
                evidence.push(
                    "ImageState says generalized, but SYSTEM\\Setup does not show Setup armed for \
                     the next boot (SystemSetupInProgress=1 and a non-zero SetupType): \
                     contradictory or incomplete, values edited by hand?"
                        .into(),
                );
                return unknown(evidence);
            }
            if let Some(n) = note {
                evidence.push(n.into());
            }
            Sysprep {
                state: SysprepState::Generalized,
                evidence,
            }
        }
        Some((state, _)) => Sysprep { state, evidence },
    }
}

/// Printable text from a hive: control characters dropped, at most [`MAX_TEXT`] characters.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

/// A string value: `Ok(None)` when absent; a value of another type is shown by its type.
fn string(hive: &Hive<'_>, path: &[&str], name: &str) -> Result<Option<String>, String> {
    match hive.value(path, name) {
        Ok(Some(Value::String(s))) => Ok(Some(clean(&s))),
        Ok(Some(Value::Dword(n))) => Ok(Some(format!("(a DWORD, {n})"))),
        Ok(Some(Value::Other(t))) => Ok(Some(format!("(a value of type {t})"))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A DWORD value: `Ok(None)` when absent or of another type (shown as absent); a hive that
/// cannot be read there is an error, never taken for an absent value.
fn dword(hive: &Hive<'_>, path: &[&str], name: &str) -> Result<Option<u32>, String> {
    match hive.value(path, name) {
        Ok(Some(Value::Dword(n))) => Ok(Some(n)),
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The SYSTEM hive's `Setup` values. A value that cannot be read is not an absent one: the
/// result is then an error (and the sysprep state unknown).
fn setup_values(h: &Hive<'_>) -> Result<SetupValues, String> {
    let read = || -> Result<SetupValues, String> {
        Ok(SetupValues {
            system_setup_in_progress: dword(h, &["Setup"], "SystemSetupInProgress")?,
            setup_type: dword(h, &["Setup"], "SetupType")?,
            cmd_line: string(h, &["Setup"], "CmdLine")?,
            generalization_state: dword(
                h,
                &["Setup", "Status", "SysprepStatus"],
                "GeneralizationState",
            )?,
        })
    };
    read().map_err(|e| format!(r"SYSTEM\Setup: {e}"))
}

/// Whether `path` is a regular file; an error other than "not found" is the error's text.
fn is_file(fs: &dyn FileSystem, path: &str) -> Result<bool, String> {
    match fs.metadata(path) {
        Ok(m) => Ok(m.kind == Kind::File),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the volume holds the Windows Boot Manager for BIOS: `/bootmgr` and `/Boot/BCD`;
/// what cannot be read goes to `problems` (and is not taken for the boot manager).
pub fn has_bootmgr(fs: &dyn FileSystem, problems: &mut Vec<String>) -> bool {
    BOOTMGR.iter().all(|p| {
        is_file(fs, p).unwrap_or_else(|e| {
            problems.push(e);
            false
        })
    })
}

/// Reads a hive file, capped at [`MAX_HIVE`].
fn read_hive(fs: &dyn FileSystem, path: &str) -> Result<Vec<u8>, String> {
    fs.read_to_vec(path, MAX_HIVE).map_err(|e| e.to_string())
}

/// `ImageState` from State.ini, when the file exists.
fn state_ini(fs: &dyn FileSystem) -> Result<Option<String>, String> {
    match fs.read_to_vec(STATE_INI, MAX_STATE_INI) {
        Ok(b) => Ok(ini_image_state(&b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// `[State]` `ImageState=` of State.ini's bytes: UTF-16LE with a BOM, or 8-bit text (its
/// encoding on real systems could not be checked here, so both are read).
pub fn ini_image_state(bytes: &[u8]) -> Option<String> {
    let text = match bytes.strip_prefix(&[0xff, 0xfe]) {
        Some(utf16) => {
            let units: Vec<u16> = utf16
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        None => String::from_utf8_lossy(bytes).into_owned(),
    };
    let mut in_state = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_state = line.eq_ignore_ascii_case("[State]");
        } else if in_state
            && let Some((k, v)) = line.split_once('=')
            && k.trim().eq_ignore_ascii_case("ImageState")
        {
            return Some(clean(v.trim()));
        }
    }
    None
}

/// The Windows installation on `fs`, if it is one: an NTFS volume with [`KERNEL`] and
/// [`SYSTEM_HIVE`]. What cannot be read goes to `problems` and makes fields unknown. An error
/// when looking for the kernel or the hive means that whether the volume holds Windows is not
/// known: that is the `Err`, with the reason, never "not Windows".
pub fn read(
    fs: &dyn FileSystem,
    problems: &mut Vec<String>,
) -> Result<Option<Installation>, String> {
    if fs.kind() != "ntfs" {
        return Ok(None);
    }
    let kernel_there = is_file(fs, KERNEL);
    let system_there = is_file(fs, SYSTEM_HIVE);
    match (kernel_there, system_there) {
        (Ok(true), Ok(true)) => {}
        // On a damaged volume, "not found" for one path proves little when the other lookup
        // failed: unknown, never "not Windows".
        (Err(e), _) | (_, Err(e)) => return Err(e),
        (Ok(false), _) | (_, Ok(false)) => return Ok(None),
    }
    let kernel = match binary::identify(fs, KERNEL) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let system_bytes = read_hive(fs, SYSTEM_HIVE);
    let system = system_bytes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| Hive::parse(b).map_err(|e| e.to_string()));

    let mut w = Installation {
        product_name: None,
        edition: None,
        version: None,
        build: None,
        kernel,
        processor_architecture: None,
        processor_architecture_from: None,
        sysprep: Sysprep {
            state: SysprepState::Unknown,
            evidence: Vec::new(),
        },
    };
    let setup = match &system {
        Ok(h) => {
            // Select\Current names the control set the next boot uses (1 → ControlSet001).
            let set = match dword(h, &["Select"], "Current") {
                Ok(Some(n @ 1..=999)) => format!("ControlSet{n:03}"),
                other => {
                    let why = other.err().map(|e| format!(" ({e})")).unwrap_or_default();
                    problems.push(format!(
                        r"{SYSTEM_HIVE}: no valid Select\Current{why}; ControlSet001 read instead"
                    ));
                    "ControlSet001".to_owned()
                }
            };
            let env = [set.as_str(), "Control", "Session Manager", "Environment"];
            match string(h, &env, "PROCESSOR_ARCHITECTURE") {
                Ok(Some(a)) => {
                    w.processor_architecture = Some(a);
                    w.processor_architecture_from =
                        Some(format!(r"SYSTEM\{set}\Control\Session Manager\Environment"));
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("{SYSTEM_HIVE}: {e}")),
            }
            setup_values(h)
        }
        Err(e) => {
            problems.push(format!("{SYSTEM_HIVE}: {e}"));
            Err(e.clone())
        }
    };
    // The SYSTEM hive's bytes are no longer needed: never hold both hives.
    drop(system);
    drop(system_bytes);
    let software_bytes = read_hive(fs, SOFTWARE_HIVE);
    let software = software_bytes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| Hive::parse(b).map_err(|e| e.to_string()));
    let current_version = ["Microsoft", "Windows NT", "CurrentVersion"];
    match &software {
        Ok(h) => {
            let get = |name| string(h, &current_version, name).ok().flatten();
            w.product_name = get("ProductName");
            w.edition = get("EditionID");
            w.build = get("CurrentBuild");
            w.version = get("DisplayVersion").or_else(|| get("ReleaseId"));
        }
        Err(e) => problems.push(format!("{SOFTWARE_HIVE}: {e}")),
    }
    let registry = match &software {
        Ok(h) => string(
            h,
            &["Microsoft", "Windows", "CurrentVersion", "Setup", "State"],
            "ImageState",
        ),
        Err(e) => Err(e.clone()),
    };
    w.sysprep = decide_sysprep(&SysprepInputs {
        system: setup,
        registry,
        state_ini: state_ini(fs),
    });
    Ok(Some(w))
}

/// The machine name (as [`Binary::arch`] names it) of a `PROCESSOR_ARCHITECTURE` value.
pub fn registry_machine(value: &str) -> Option<&'static str> {
    Some(match value.to_ascii_uppercase().as_str() {
        "AMD64" => "x86_64",
        "X86" => "i386",
        "ARM64" => "aarch64",
        "IA64" => "ia64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(ssip: u32, ty: u32) -> SetupValues {
        SetupValues {
            system_setup_in_progress: Some(ssip),
            setup_type: Some(ty),
            cmd_line: Some(if ty == 0 { "" } else { r"oobe\windeploy.exe" }.into()),
            generalization_state: Some(7),
        }
    }

    fn inputs(system: Result<SetupValues, &str>, reg: Option<&str>) -> SysprepInputs {
        SysprepInputs {
            system: system.map_err(str::to_owned),
            registry: Ok(reg.map(str::to_owned)),
            state_ini: Ok(None),
        }
    }

    fn state(i: &SysprepInputs) -> SysprepState {
        decide_sysprep(i).state
    }

    #[test]
    fn the_decision_table() {
        use SysprepState::*;
        // Row 2: SYSTEM unreadable or dirty.
        let s = decide_sysprep(&inputs(Err("the hive is dirty"), Some("x")));
        assert_eq!(s.state, Unknown);
        assert_eq!(s.evidence, ["SYSTEM hive: the hive is dirty"]);
        // Row 3: SOFTWARE unreadable (damaged, dirty): unknown, whatever State.ini says.
        let mut i = inputs(Ok(setup(1, 2)), None);
        i.registry = Err("damaged".into());
        let s = decide_sysprep(&i);
        assert_eq!(s.state, Unknown);
        assert_eq!(s.evidence, ["SOFTWARE hive: damaged"]);
        i.state_ini = Ok(Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE".into()));
        assert_eq!(state(&i), Unknown);
        // State.ini alone decides when the registry has no ImageState.
        let mut i = inputs(Ok(setup(1, 2)), None);
        i.state_ini = Ok(Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE".into()));
        assert_eq!(state(&i), Generalized);
        // Row 4: the two disagree.
        let mut i = inputs(
            Ok(setup(1, 2)),
            Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"),
        );
        i.state_ini = Ok(Some("IMAGE_STATE_COMPLETE".into()));
        assert_eq!(state(&i), Unknown);
        // Row 5: each state that is not generalized.
        for v in [
            "IMAGE_STATE_COMPLETE",
            "IMAGE_STATE_UNDEPLOYABLE",
            "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE",
            "IMAGE_STATE_SPECIALIZE_RESEAL_TO_AUDIT",
        ] {
            assert_eq!(
                state(&inputs(Ok(setup(0, 0)), Some(v))),
                NotGeneralized,
                "{v}"
            );
        }
        // Row 6: generalized and Setup armed; to audit mode says so.
        let s = decide_sysprep(&inputs(
            Ok(setup(1, 2)),
            Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"),
        ));
        assert_eq!(s.state, Generalized);
        assert_eq!(
            s.evidence,
            [
                r"ImageState=IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE (SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State)",
                r#"SYSTEM\Setup: SystemSetupInProgress=1 SetupType=2 CmdLine="oobe\windeploy.exe""#,
                r"SYSTEM\Setup\Status\SysprepStatus: GeneralizationState=7 (undocumented; not used to decide)",
            ]
        );
        let s = decide_sysprep(&inputs(
            Ok(setup(1, 2)),
            Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT"),
        ));
        assert_eq!(s.state, Generalized);
        assert!(s.evidence.last().unwrap().contains("audit mode"));
        // Rows 7 and 8: generalized, but Setup not armed for the next boot: a finished system,
        // one of the two values at 0, or either absent. Only SystemSetupInProgress=1 with a
        // non-zero SetupType is armed.
        let g = Some("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE");
        for (ssip, ty) in [(0, 0), (0, 2), (1, 0), (2, 2)] {
            let s = decide_sysprep(&inputs(Ok(setup(ssip, ty)), g));
            assert_eq!(s.state, Unknown, "{ssip} {ty}");
            assert!(s.evidence.last().unwrap().contains("not show Setup armed"));
        }
        for values in [
            SetupValues::default(),
            SetupValues {
                setup_type: None,
                ..setup(1, 2)
            },
            SetupValues {
                system_setup_in_progress: None,
                ..setup(1, 2)
            },
        ] {
            assert_eq!(state(&inputs(Ok(values), g)), Unknown);
        }
        assert_eq!(state(&inputs(Ok(setup(1, 1)), g)), Generalized);
        // State.ini that cannot be read: unknown, whatever the registry says.
        let mut i = inputs(Ok(setup(1, 2)), g);
        i.state_ini = Err("over 65536 bytes".into());
        let s = decide_sysprep(&i);
        assert_eq!(s.state, Unknown);
        assert_eq!(
            s.evidence,
            [r"Windows\Setup\State\State.ini: over 65536 bytes"]
        );
        // Row 9: ImageState missing or unrecognised.
        assert_eq!(state(&inputs(Ok(setup(1, 2)), None)), Unknown);
        assert_eq!(
            state(&inputs(Ok(setup(1, 2)), Some("(a DWORD, 7)"))),
            Unknown
        );
        // GeneralizationState never decides: 7 with a finished system stays not generalized.
        assert_eq!(
            state(&inputs(Ok(setup(0, 0)), Some("IMAGE_STATE_COMPLETE"))),
            NotGeneralized
        );
    }

    /// A `Setup` value that cannot be read (its value list points outside the hive) makes the
    /// SYSTEM input an error, not absent values; a `Setup` key without values reads as absent.
    #[test]
    fn unreadable_setup_values_are_an_error() {
        use crate::ondisk::regf::test_hive::HiveBytes;
        let mut h = HiveBytes::new();
        let list = h.cell(&0x7fff_0000u32.to_le_bytes());
        let setup = h.nk_values("Setup", 1, list);
        let root = h.nk("ROOT", &[setup]);
        let bytes = h.finish(root);
        let hive = Hive::parse(&bytes).expect("the hive parses");
        let e = setup_values(&hive).expect_err("a value outside the hive");
        assert!(e.starts_with(r"SYSTEM\Setup: "), "{e}");

        let mut h = HiveBytes::new();
        let setup = h.nk("Setup", &[]);
        let root = h.nk("ROOT", &[setup]);
        let bytes = h.finish(root);
        let hive = Hive::parse(&bytes).expect("the hive parses");
        assert_eq!(setup_values(&hive), Ok(SetupValues::default()));
    }

    /// An NTFS volume (as far as `read` can tell) where looking up one path fails and the
    /// other is not there.
    struct HalfBroken {
        broken: &'static str,
    }

    impl FileSystem for HalfBroken {
        fn name(&self) -> &std::path::Path {
            std::path::Path::new("half-broken")
        }
        fn kind(&self) -> &'static str {
            "ntfs"
        }
        fn read_dir(
            &self,
            path: &str,
            _: usize,
        ) -> Result<Vec<crate::fs::Entry>, crate::fs::Error> {
            Err(self.error(path))
        }
        fn metadata(&self, path: &str) -> Result<crate::fs::Meta, crate::fs::Error> {
            Err(self.error(path))
        }
        fn symlink_metadata(&self, path: &str) -> Result<crate::fs::Meta, crate::fs::Error> {
            Err(self.error(path))
        }
        fn read_link(&self, path: &str) -> Result<String, crate::fs::Error> {
            Err(self.error(path))
        }
        fn read_at(&self, path: &str, _: u64, _: &mut [u8]) -> Result<usize, crate::fs::Error> {
            Err(self.error(path))
        }
        fn read_to_vec(&self, path: &str, _: u64) -> Result<Vec<u8>, crate::fs::Error> {
            Err(self.error(path))
        }
    }

    impl HalfBroken {
        fn error(&self, path: &str) -> crate::fs::Error {
            let name = std::path::PathBuf::from("half-broken");
            crate::fs::Error::from(if path == self.broken {
                crate::fs::ntfs::Error::Corrupt {
                    name,
                    path: Some(path.to_owned()),
                    reason: "a loop in its B-tree".into(),
                }
            } else {
                crate::fs::ntfs::Error::NotFound {
                    name,
                    path: path.to_owned(),
                }
            })
        }
    }

    /// A failed lookup of the kernel or of the SYSTEM hive makes "Windows unknown", even when
    /// the other path is simply not there: never "not Windows".
    #[test]
    fn a_failed_lookup_is_unknown_not_absent() {
        for broken in [KERNEL, SYSTEM_HIVE] {
            let mut problems = Vec::new();
            let got = read(&HalfBroken { broken }, &mut problems);
            let e = got.expect_err(broken);
            assert!(
                e.contains(broken) && e.contains("a loop in its B-tree"),
                "{e}"
            );
        }
        let mut problems = Vec::new();
        let got = read(
            &HalfBroken {
                broken: "/elsewhere",
            },
            &mut problems,
        );
        assert!(matches!(got, Ok(None)), "{problems:?}");
    }

    #[test]
    fn state_ini_in_both_encodings() {
        let text = "[Other]\r\nImageState=NO\r\n[State]\r\nImageState = IMAGE_STATE_COMPLETE \r\n";
        assert_eq!(
            ini_image_state(text.as_bytes()).as_deref(),
            Some("IMAGE_STATE_COMPLETE")
        );
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            ini_image_state(&utf16).as_deref(),
            Some("IMAGE_STATE_COMPLETE")
        );
        assert_eq!(ini_image_state(b"[State]\nOther=1\n"), None);
        assert_eq!(ini_image_state(b"ImageState=X\n"), None);
    }

    /// A disk whose only volume is NTFS holding `w` (no partition table).
    fn disk_with(w: Installation) -> crate::inspect::DiskReport {
        use crate::inspect::{DiskReport, Volume, VolumeInfo, table};
        DiskReport {
            device: None,
            file: "w.raw".into(),
            format: "raw",
            virtual_size: 1 << 20,
            partition_table: table::PartitionTable {
                scheme: table::Scheme::None,
                sector_size: 512,
                disk_guid: None,
                partitions: Vec::new(),
                mbr_boot_code: false,
                grub: None,
                problems: Vec::new(),
            },
            volumes: vec![Volume {
                info: VolumeInfo {
                    partition: None,
                    partition_type: None,
                    offset: 0,
                    size: 1 << 20,
                    filesystem: Some(crate::inspect::signature::FsKind::Ntfs),
                    filesystem_size: None,
                },
                os_release: None,
                kernels: Vec::new(),
                initrds: Vec::new(),
                loaders: Vec::new(),
                evidence: Vec::new(),
                windows: Some(w),
                windows_unknown: None,
                bootmgr: false,
                problems: Vec::new(),
            }],
        }
    }

    #[test]
    fn the_kernel_and_the_registry_must_agree_on_the_architecture() {
        let kernel = binary::identify_bytes(&{
            let mut b = vec![0u8; 512];
            b[..2].copy_from_slice(b"MZ");
            b[0x3c] = 0x80;
            b[0x80..0x84].copy_from_slice(b"PE\0\0");
            b[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
            b[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
            b[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
            b[0x98 + 68] = 1;
            b
        })
        .unwrap();
        let install = |arch: &str| Installation {
            product_name: None,
            edition: None,
            version: None,
            build: None,
            kernel: Some(kernel),
            processor_architecture: Some(arch.into()),
            processor_architecture_from: Some(
                r"SYSTEM\ControlSet001\Control\Session Manager\Environment".into(),
            ),
            sysprep: Sysprep {
                state: SysprepState::Unknown,
                evidence: Vec::new(),
            },
        };
        let s = crate::inspect::summarize(&disk_with(install("AMD64")));
        assert!(s.windows);
        assert_eq!(s.os.as_deref(), Some("Windows"));
        assert_eq!(s.machine.as_deref(), Some("x86_64"));
        assert!(s.problems.is_empty(), "{:?}", s.problems);

        let s = crate::inspect::summarize(&disk_with(install("x86")));
        assert_eq!(s.machine, None);
        assert_eq!(s.architecture, None);
        assert_eq!(s.architecture_evidence.len(), 2);
        assert_eq!(
            s.problems,
            [
                "ntoskrnl.exe is x86_64, but the registry's PROCESSOR_ARCHITECTURE is x86: the \
              architecture is unknown"
            ]
        );
    }

    /// MBR boot code boots Windows only with bootmgr and Boot/BCD on the active partition.
    #[test]
    fn legacy_needs_bootmgr_on_the_active_partition() {
        use crate::inspect::table::{Partition, Scheme};
        let kernel = binary::identify_bytes(&{
            let mut b = vec![0u8; 512];
            b[..2].copy_from_slice(b"MZ");
            b[0x3c] = 0x80;
            b[0x80..0x84].copy_from_slice(b"PE\0\0");
            b[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
            b[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
            b[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
            b
        })
        .unwrap();
        let mbr_disk = |bootmgr: bool, active: bool| {
            let mut d = disk_with(Installation {
                product_name: None,
                edition: None,
                version: None,
                build: None,
                kernel: Some(kernel),
                processor_architecture: None,
                processor_architecture_from: None,
                sysprep: Sysprep {
                    state: SysprepState::Generalized,
                    evidence: Vec::new(),
                },
            });
            d.partition_table.scheme = Scheme::Mbr;
            d.partition_table.mbr_boot_code = true;
            d.partition_table.partitions.push(Partition {
                index: 1,
                type_guid: Default::default(),
                type_name: "ntfs-exfat".into(),
                unique_guid: None,
                mbr_type: Some(7),
                first_lba: 2048,
                last_lba: 4095,
                offset: 1 << 20,
                size: 1 << 20,
                name: String::new(),
                attributes: 0,
                bootable: active,
            });
            d.volumes[0].info.partition = Some(1);
            d.volumes[0].bootmgr = bootmgr;
            d
        };
        let s = crate::inspect::summarize(&mbr_disk(true, true));
        assert_eq!(s.boot_modes, [crate::manifest::BootMode::Legacy]);
        assert_eq!(
            s.boot_evidence,
            [
                "legacy: the MBR holds boot code",
                "legacy: partition 1 (active) holds /bootmgr and /Boot/BCD"
            ]
        );
        let s = crate::inspect::summarize(&mbr_disk(false, true));
        assert!(s.boot_modes.is_empty());
        assert_eq!(
            s.legacy_problems,
            ["the MBR holds boot code, but the active partition 1 holds no /bootmgr and /Boot/BCD"]
        );
        let s = crate::inspect::summarize(&mbr_disk(true, false));
        assert!(s.boot_modes.is_empty());
        assert_eq!(
            s.legacy_problems,
            ["the MBR holds boot code, but no partition is active to hold /bootmgr and /Boot/BCD"]
        );
    }

    #[test]
    fn registry_architectures() {
        assert_eq!(registry_machine("AMD64"), Some("x86_64"));
        assert_eq!(registry_machine("x86"), Some("i386"));
        assert_eq!(registry_machine("ARM64"), Some("aarch64"));
        assert_eq!(registry_machine("MIPS"), None);
    }
}
