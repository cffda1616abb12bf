//! Where the Go runtime keeps the state the agent reads: the global variables
//! `runtime.allglen`, `runtime.allp`, `runtime.sched`, `runtime.memstats` and
//! `runtime.gcController`. From the ELF symbol table when the binary has one; in a stripped
//! binary, from the code of runtime functions that use them, which Go's function table
//! locates in every binary.
//!
//! On amd64, Go code reaches global variables RIP-relatively in every build mode, so the code
//! of a function holds the addresses of the globals and fields it touches (see
//! `disasm::rip_relative_operands`). A global is solved for from fields whose offsets are
//! known (DWARF, else the offsets table): its address is the value `B` for which `B + offset`
//! of every such field is among the function's operands, read or written with the field's
//! width or with its address taken. Exactly one such `B` is accepted; none or several is an
//! error (the runtime's state is then not read), never a guess.
//!
//! The functions and fields were chosen by comparing operands with the symbol table in builds
//! of every supported release (Go 1.19 to 1.27) in every build mode. Each function is linked
//! into every Go program (the scheduler or the GC calls it) and all but `gcMarkTermination`
//! are small. (`runtime.gcount`, which reads allglen, sched and allp together, is always
//! inlined; `runtime.readGCStats_m` is linked only into programs that call
//! `runtime/debug.ReadGCStats`.) `tests/tests/symbols.rs` checks that the choice still holds
//! for every release installed.
//!
//! | global | function | what solves it |
//! | --- | --- | --- |
//! | `sched` | `runtime.oneNewExtraM` (`sched.goidgen.Add`, `sched.ngsys.Add`) | `schedt.goidgen` (8 bytes), `schedt.ngsys` (4) |
//! | `allp` | `runtime.preemptall` (`range allp`) | the slice header: pointer at 0, length at 8 (8 bytes each) |
//! | `memstats` | `runtime.gcMarkTermination` (`memstats.numgc++`, `memstats.pause_total_ns +=`) | `mstats.numgc` (4), `mstats.pause_total_ns` (8) |
//! | `gcController` | `runtime.gcControllerCommit` (`gcController.memoryLimit.Load()`, `gcController.lastHeapGoal`) | `gcControllerState.memoryLimit` (8), `gcControllerState.lastHeapGoal` (8) |
//! | `allglen` | `runtime.forEachGRace`, `runtime.allgadd` | see [`allglen_candidates`] |
//!
//! Widths matter for `memstats`: `gcMarkTermination` also updates the fields next to both,
//! which match a base 8 bytes further on by address alone. The fields the agent reads from
//! `gcController` (`heapMarked`, `gcPercentHeapGoal`) are only ever reached through a pointer
//! (the controller's methods) in code every program links, never RIP-relatively, hence two
//! others here.

use std::{collections::HashMap, sync::Arc};

use super::{
    disasm::{self, Access, RipOperand},
    dwarf::{offset_of, Layouts},
    elf::{ElfFile, FunctionSymbol},
    SymbolsError,
};

pub const ALLGLEN: &str = "runtime.allglen";
pub const ALLP: &str = "runtime.allp";
pub const SCHED: &str = "runtime.sched";
pub const MEMSTATS: &str = "runtime.memstats";
pub const GC_CONTROLLER: &str = "runtime.gcController";
const GLOBALS: [&str; 5] = [ALLGLEN, ALLP, SCHED, MEMSTATS, GC_CONTROLLER];

const ONE_NEW_EXTRA_M: &str = "runtime.oneNewExtraM";
const PREEMPTALL: &str = "runtime.preemptall";
const GC_MARK_TERMINATION: &str = "runtime.gcMarkTermination";
const GC_CONTROLLER_COMMIT: &str = "runtime.gcControllerCommit";
const FOR_EACH_G_RACE: &str = "runtime.forEachGRace";
const ALLGADD: &str = "runtime.allgadd";

/// The runtime functions whose code locates the globals in a stripped binary.
pub const CODE_FUNCTIONS: [&str; 6] = [
    ONE_NEW_EXTRA_M,
    PREEMPTALL,
    GC_MARK_TERMINATION,
    GC_CONTROLLER_COMMIT,
    FOR_EACH_G_RACE,
    ALLGADD,
];

/// The structs and members whose offsets solve for the globals (their names as DWARF has
/// them; `go_binary::WANTED_FIELDS` lists them for the offsets table).
pub const SCHEDT: &str = "runtime.schedt";
pub const MSTATS: &str = "runtime.mstats";
pub const GC_CONTROLLER_STATE: &str = "runtime.gcControllerState";

/// Width of a pointer, a Go `int` and a `uintptr` on amd64: a slice header is a pointer and
/// two ints.
const WORD: usize = 8;

/// The five globals' link-time addresses (add the process's load bias for PIE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeGlobals {
    pub allglen: u64,
    pub allp: u64,
    pub sched: u64,
    pub memstats: u64,
    pub gc_controller: u64,
}

/// Where the addresses came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalsSource {
    SymbolTable,
    /// Solved from the code of [`CODE_FUNCTIONS`] (the binary has no symbol for them).
    Code,
}

/// Why the runtime's globals were not found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GlobalsError {
    #[error(transparent)]
    SymbolTable(Arc<SymbolsError>),
    #[error(
        "no symbols for the runtime's globals, and {0}: the runtime's own counts cannot be read"
    )]
    NotSolved(SolveError),
}

/// Why the globals cannot be solved from code (see the module's documentation).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SolveError {
    #[error("{function} is not in the binary")]
    FunctionMissing { function: &'static str },
    #[error("the code of {function} is not in the file")]
    CodeOutsideFile { function: &'static str },
    #[error("{function}: {reason}")]
    Undecodable {
        function: &'static str,
        reason: String,
    },
    /// The offset of a field that solves for a global.
    #[error(transparent)]
    FieldOffset(Arc<SymbolsError>),
    #[error("{global} is not found in the code of {}", .functions.join(" and "))]
    NotFound {
        global: &'static str,
        functions: &'static [&'static str],
    },
    #[error(
        "{global} is ambiguous in the code of {} ({candidates} candidates)",
        .functions.join(" and ")
    )]
    Ambiguous {
        global: &'static str,
        functions: &'static [&'static str],
        candidates: usize,
    },
    #[error("two runtime globals solve to one address: {globals:x?}")]
    SameAddress { globals: RuntimeGlobals },
    #[error("{global} solves to {address:#x}, outside the binary's segments")]
    OutsideSegments { global: &'static str, address: u64 },
}

/// The globals from the symbol table, else from code. `functions` must hold
/// [`CODE_FUNCTIONS`] where the binary has them.
pub fn find(
    elf: &ElfFile,
    functions: &HashMap<String, FunctionSymbol>,
    layouts: &Layouts,
) -> Result<(RuntimeGlobals, GlobalsSource), GlobalsError> {
    if let Some(globals) = from_symbols(elf).map_err(|e| GlobalsError::SymbolTable(Arc::new(e)))? {
        return Ok((globals, GlobalsSource::SymbolTable));
    }
    from_code(elf, functions, layouts)
        .map(|globals| (globals, GlobalsSource::Code))
        .map_err(GlobalsError::NotSolved)
}

/// The globals from the ELF symbol table; `None` unless it has all five.
pub fn from_symbols(elf: &ElfFile) -> Result<Option<RuntimeGlobals>, SymbolsError> {
    let symbols = elf.functions(&GLOBALS)?;
    let address = |name: &str| symbols.get(name).map(|s| s.address);
    Ok((|| {
        Some(RuntimeGlobals {
            allglen: address(ALLGLEN)?,
            allp: address(ALLP)?,
            sched: address(SCHED)?,
            memstats: address(MEMSTATS)?,
            gc_controller: address(GC_CONTROLLER)?,
        })
    })())
}

/// A field a function is known to touch: its offset in the global, and its width in bytes.
#[derive(Clone, Copy, Debug)]
struct Field {
    offset: u64,
    width: usize,
}

/// The globals solved from the code of [`CODE_FUNCTIONS`] (found in `functions`), with the
/// struct offsets of `layouts`. Fails, saying which global and why, unless every one has
/// exactly one solution.
pub fn from_code(
    elf: &ElfFile,
    functions: &HashMap<String, FunctionSymbol>,
    layouts: &Layouts,
) -> Result<RuntimeGlobals, SolveError> {
    let operands = |function: &'static str| -> Result<Vec<RipOperand>, SolveError> {
        let f = functions
            .get(function)
            .ok_or(SolveError::FunctionMissing { function })?;
        let code = elf
            .bytes_at(f.address, f.size)
            .filter(|code| f.size > 0 && code.len() as u64 == f.size)
            .ok_or(SolveError::CodeOutsideFile { function })?;
        disasm::rip_relative_operands(code, f.address)
            .map_err(|reason| SolveError::Undecodable { function, reason })
    };
    let field = |strukt: &str, member: &str, width: usize| -> Result<Field, SolveError> {
        let offset =
            offset_of(layouts, strukt, member).map_err(|e| SolveError::FieldOffset(Arc::new(e)))?;
        Ok(Field { offset, width })
    };
    let solve = |global: &'static str,
                 function: &'static [&'static str; 1],
                 fields: &[Field]|
     -> Result<u64, SolveError> {
        unique(global, function, bases(&operands(function[0])?, fields))
    };
    // Widths are the fields' Go types (atomic wrappers or not, across releases): goidgen
    // 64 bits, ngsys 32, numgc 32, pause_total_ns 64, memoryLimit 64, lastHeapGoal 64.
    let globals = RuntimeGlobals {
        sched: solve(
            SCHED,
            &[ONE_NEW_EXTRA_M],
            &[field(SCHEDT, "goidgen", 8)?, field(SCHEDT, "ngsys", 4)?],
        )?,
        allp: solve(
            ALLP,
            &[PREEMPTALL],
            &[
                Field {
                    offset: 0,
                    width: WORD,
                },
                Field {
                    offset: WORD as u64,
                    width: WORD,
                },
            ],
        )?,
        memstats: solve(
            MEMSTATS,
            &[GC_MARK_TERMINATION],
            &[
                field(MSTATS, "numgc", 4)?,
                field(MSTATS, "pause_total_ns", 8)?,
            ],
        )?,
        gc_controller: solve(
            GC_CONTROLLER,
            &[GC_CONTROLLER_COMMIT],
            &[
                field(GC_CONTROLLER_STATE, "memoryLimit", 8)?,
                field(GC_CONTROLLER_STATE, "lastHeapGoal", 8)?,
            ],
        )?,
        allglen: unique(
            ALLGLEN,
            &[FOR_EACH_G_RACE, ALLGADD],
            allglen_candidates(&operands(FOR_EACH_G_RACE)?, &operands(ALLGADD)?),
        )?,
    };
    // Cheap checks that the code was what it seemed (a damaged binary decodes to anything):
    // five distinct variables, each in the binary's memory. In the order of `GLOBALS`.
    let addresses = [
        globals.allglen,
        globals.allp,
        globals.sched,
        globals.memstats,
        globals.gc_controller,
    ];
    if (1..addresses.len()).any(|i| addresses[..i].contains(&addresses[i])) {
        return Err(SolveError::SameAddress { globals });
    }
    if let Some((&global, address)) = GLOBALS
        .iter()
        .zip(addresses)
        .find(|(_, address)| !elf.is_loaded(*address))
    {
        return Err(SolveError::OutsideSegments { global, address });
    }
    Ok(globals)
}

/// Every base `B` for which each field has an operand at `B + offset`, accessed with the
/// field's width or with its address taken.
fn bases(operands: &[RipOperand], fields: &[Field]) -> Vec<u64> {
    let touches = |address: u64, field: &Field| {
        operands.iter().any(|o| {
            o.address == address
                && match o.access {
                    Access::Address => true,
                    Access::Bytes(width) => width == field.width,
                }
        })
    };
    let Some(first) = fields.first() else {
        return Vec::new();
    };
    let mut bases: Vec<u64> = operands
        .iter()
        .map(|o| o.address.wrapping_sub(first.offset))
        .filter(|&base| {
            fields
                .iter()
                .all(|f| touches(base.wrapping_add(f.offset), f))
        })
        .collect();
    bases.sort_unstable();
    bases.dedup();
    bases
}

/// `runtime.allglen` has no fields to solve with; two functions tell it apart.
/// `forEachGRace` reads `allglen` and `allgptr` (the length and array of all goroutines, read
/// together by `atomicAllG`). `allgadd` writes both: `allgptr` after comparing it with the
/// new array (a read), `allglen` by an atomic store through its address, never reading it.
/// So `allglen` is what `forEachGRace` reads, word-wide, that `allgadd` only takes the address
/// of.
fn allglen_candidates(for_each_g: &[RipOperand], allgadd: &[RipOperand]) -> Vec<u64> {
    let in_allgadd = |address: u64, wanted: fn(Access) -> bool| {
        allgadd
            .iter()
            .any(|o| o.address == address && wanted(o.access))
    };
    let mut candidates: Vec<u64> = for_each_g
        .iter()
        .filter(|o| o.access == Access::Bytes(WORD))
        .map(|o| o.address)
        .filter(|&a| {
            in_allgadd(a, |access| access == Access::Address)
                && !in_allgadd(a, |access| matches!(access, Access::Bytes(_)))
        })
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates
}

/// The one solution, else why there is none.
fn unique(
    global: &'static str,
    functions: &'static [&'static str],
    solutions: Vec<u64>,
) -> Result<u64, SolveError> {
    match solutions[..] {
        [address] => Ok(address),
        [] => Err(SolveError::NotFound { global, functions }),
        _ => Err(SolveError::Ambiguous {
            global,
            functions,
            candidates: solutions.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(address: u64, width: usize) -> RipOperand {
        RipOperand {
            address,
            access: Access::Bytes(width),
        }
    }

    fn lea(address: u64) -> RipOperand {
        RipOperand {
            address,
            access: Access::Address,
        }
    }

    const NUMGC: Field = Field {
        offset: 0x1e18,
        width: 4,
    };
    const PAUSE_TOTAL_NS: Field = Field {
        offset: 0xe10,
        width: 8,
    };

    #[test]
    fn a_global_is_solved_from_its_fields() {
        // Go 1.19's oneNewExtraM: the extra M's goroutine id and system-goroutine count,
        // both through their address (atomics), among other globals.
        let sched = 0x856160;
        let operands = [
            lea(0x4659a0),
            read(0x8846a0, 4),
            lea(sched),
            lea(sched + 0x48),
            read(0x8842a8, 4),
            lea(0x884390),
        ];
        let fields = [
            Field {
                offset: 0,
                width: 8,
            },
            Field {
                offset: 0x48,
                width: 4,
            },
        ];
        assert_eq!(bases(&operands, &fields), [sched]);
        assert_eq!(
            unique(SCHED, &[ONE_NEW_EXTRA_M], bases(&operands, &fields)),
            Ok(sched)
        );
    }

    #[test]
    fn widths_tell_neighbouring_fields_apart() {
        // gcMarkTermination touches numgc and the field after it (numforcedgc, 4 bytes;
        // gc_cpu_fraction, 8), pause_total_ns and the fields around it.
        let memstats = 0x888580;
        let operands = [
            lea(memstats + 0xe08),
            read(memstats + 0xe10, 8),
            lea(memstats + 0xe18),
            read(memstats + 0x1e18, 4),
            read(memstats + 0x1e1c, 4),
            read(memstats + 0x1e20, 8),
        ];
        assert_eq!(bases(&operands, &[NUMGC, PAUSE_TOTAL_NS]), [memstats]);
        // By address alone, memstats + 8 would do too.
        let any_width = |f: Field| Field { width: 8, ..f };
        let addresses_only: Vec<RipOperand> = operands.iter().map(|o| lea(o.address)).collect();
        assert_eq!(
            bases(
                &addresses_only,
                &[any_width(NUMGC), any_width(PAUSE_TOTAL_NS)]
            ),
            [memstats, memstats + 8]
        );
    }

    #[test]
    fn ambiguity_and_absence_are_errors() {
        let operands = [read(0x1000, 8), read(0x1008, 8), read(0x1010, 8)];
        let slice = [
            Field {
                offset: 0,
                width: 8,
            },
            Field {
                offset: 8,
                width: 8,
            },
        ];
        let both = bases(&operands, &slice);
        assert_eq!(both, [0x1000, 0x1008]);
        let err = unique(ALLP, &[PREEMPTALL], both).unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime.allp is ambiguous in the code of runtime.preemptall (2 candidates)"
        );
        let none = bases(&[read(0x1000, 8)], &slice);
        let err = unique(ALLGLEN, &[FOR_EACH_G_RACE, ALLGADD], none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime.allglen is not found in the code of runtime.forEachGRace and \
             runtime.allgadd"
        );
        assert!(bases(&operands, &[]).is_empty());
    }

    #[test]
    fn allglen_is_read_by_for_each_g_and_only_addressed_by_allgadd() {
        let (allglen, allgptr, allgs, allglock) = (0x884350, 0x853318, 0x854600, 0x884358);
        let for_each_g = [read(allglen, 8), read(allgptr, 8)];
        let allgadd = [
            lea(allglock),
            read(allgs + 8, 8),
            read(allgs, 8),
            read(allgptr, 8),
            lea(allgptr),
            lea(allglen),
            lea(allglock),
        ];
        assert_eq!(allglen_candidates(&for_each_g, &allgadd), [allglen]);
        // Had allgadd read allglen too, nothing would tell them apart.
        let mut reads_both = allgadd.to_vec();
        reads_both.push(read(allglen, 8));
        assert!(allglen_candidates(&for_each_g, &reads_both).is_empty());
    }
}
