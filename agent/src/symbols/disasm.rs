//! Reading machine code: where to put a uprobe in a function so that the kernel emulates the
//! probed instruction instead of single-stepping it (~1 µs instead of ~20 µs per hit here),
//! and which global variables a function touches (its RIP-relative operands).
//!
//! Every Go function that can grow its stack begins `cmp rsp|r12, 16(r14)` and a conditional
//! jump to `morestack`; argument registers are untouched up to that jump, so it is the
//! cheapest exact place to read a function's arguments.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// The stack-check conditional jump: emulated, arguments intact.
    StackCheckJump,
    /// The function's first instruction: single-stepped, slow.
    Entry,
    /// A direct `call` to a known function: emulated; the callee's arguments are set.
    Call,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Offset from the function's start.
    pub offset: u64,
    pub kind: SiteKind,
}

/// How far into a function the stack check may sit (the prologue's `lea` + `cmp` + `jcc`).
const PROLOGUE_BYTES: usize = 32;

/// Finds the stack-check jump among the first instructions of `code` (the function's bytes,
/// starting at its entry `address`). Only instructions that cannot move arguments may come
/// before it.
pub fn find_stack_check_jump(code: &[u8], address: u64) -> Option<ProbeSite> {
    let code = &code[..code.len().min(PROLOGUE_BYTES)];
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut saw_stack_compare = false;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        match insn.flow_control() {
            FlowControl::ConditionalBranch if saw_stack_compare => {
                return Some(ProbeSite {
                    offset: insn.ip() - address,
                    kind: SiteKind::StackCheckJump,
                });
            }
            FlowControl::Next => {}
            _ => return None,
        }
        match insn.mnemonic() {
            Mnemonic::Cmp => saw_stack_compare = true,
            // `lea r12, [rsp-N]` precedes the compare in functions with big frames.
            Mnemonic::Lea => {}
            _ => return None,
        }
    }
    None
}

/// The first direct `call` to `target` in `code` (a function's bytes, starting at `address`).
pub fn find_call_to(code: &[u8], address: u64, target: u64) -> Option<ProbeSite> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.flow_control() == FlowControl::Call
            && insn.is_call_near()
            && insn.near_branch_target() == target
        {
            return Some(ProbeSite {
                offset: insn.ip() - address,
                kind: SiteKind::Call,
            });
        }
    }
    None
}

/// A RIP-relative operand: on amd64 Go reaches every global variable this way (in every
/// build mode), so a function's RIP-relative operands are the globals (and fields of
/// globals) it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RipOperand {
    /// The link-time address the operand designates.
    pub address: u64,
    /// How the instruction uses it.
    pub access: Access,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Its address is taken (`lea`), e.g. for an atomic operation or a method's receiver:
    /// nothing says how wide what is there is.
    Address,
    /// Read or written, this many bytes wide.
    Bytes(usize),
}

/// Every RIP-relative operand of `code` (a function's bytes, starting at `address`), in
/// instruction order. Fails on bytes that do not decode, which a function's never do.
pub fn rip_relative_operands(code: &[u8], address: u64) -> Result<Vec<RipOperand>, String> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut operands = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err(format!("undecodable bytes at {:#x}", insn.ip()));
        }
        let has_memory_operand = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
        if !has_memory_operand || !insn.is_ip_rel_memory_operand() {
            continue;
        }
        let access = if insn.mnemonic() == Mnemonic::Lea {
            Access::Address
        } else {
            Access::Bytes(insn.memory_size().size())
        };
        operands.push(RipOperand {
            address: insn.ip_rel_memory_address(),
            access,
        });
    }
    Ok(operands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frame_prologue() {
        // cmp rsp, [r14+0x10]; jbe +0xb7; sub rsp, 0x18
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xb7, 0x00, 0x00, 0x00, 0x48, 0x83, 0xec, 0x18,
        ];
        let site = find_stack_check_jump(&code, 0x613020).unwrap();
        assert_eq!(
            site,
            ProbeSite {
                offset: 4,
                kind: SiteKind::StackCheckJump
            }
        );
    }

    #[test]
    fn big_frame_prologue() {
        // lea r12, [rsp-0x28]; cmp r12, [r14+0x10]; jbe ...
        let code = [
            0x4c, 0x8d, 0x64, 0x24, 0xd8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x54, 0x03, 0x00,
            0x00,
        ];
        let site = find_stack_check_jump(&code, 0x617880).unwrap();
        assert_eq!(site.offset, 9);
    }

    #[test]
    fn call_site() {
        // From Go 1.19's runtime.newproc.func1 at 0x441760:
        // mov rbx, rax; mov ecx, 1; mov rax, rdx; nop [rax+rax]; call runtime.runqput;
        // call runtime.wakep
        let code = [
            0x48, 0x89, 0xc3, 0xb9, 0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0xd0, 0x0f, 0x1f, 0x44,
            0x00, 0x00, 0xe8, 0x3b, 0x41, 0x00, 0x00, 0xe8, 0x6d, 0xc1, 0xff, 0xff,
        ];
        let site = find_call_to(&code, 0x441790, 0x4458e0).unwrap();
        assert_eq!(site.offset, 0x10);
        assert_eq!(site.kind, SiteKind::Call);
        assert_eq!(find_call_to(&code, 0x441790, 0x1234), None);
        assert_eq!(find_call_to(&[0xe8, 0x00], 0x1000, 0x1005), None);
    }

    #[test]
    fn no_stack_check() {
        // push rbp; mov rbp, rsp; ...
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        assert_eq!(find_stack_check_jump(&code, 0x1000), None);
        assert_eq!(find_stack_check_jump(&[], 0x1000), None);
        assert_eq!(find_stack_check_jump(&[0xff, 0xff, 0xff], 0x1000), None);
    }

    #[test]
    fn rip_relative_operands_of_go_code() {
        // From a Go 1.19 build's runtime.preemptall (`range allp`, allp at 0x854620):
        // mov rcx, [rip+0x40ff25]; mov [rsp+0x20], rcx; mov rdx, [rip+0x40ff21]
        let code = [
            0x48, 0x8b, 0x0d, 0x25, 0xff, 0x40, 0x00, 0x48, 0x89, 0x4c, 0x24, 0x20, 0x48, 0x8b,
            0x15, 0x21, 0xff, 0x40, 0x00,
        ];
        let operands = rip_relative_operands(&code, 0x4446f4).unwrap();
        assert_eq!(
            operands,
            [
                RipOperand {
                    address: 0x854620,
                    access: Access::Bytes(8)
                },
                RipOperand {
                    address: 0x854628,
                    access: Access::Bytes(8)
                },
            ]
        );
        // lea rax, [rip+0x100]; inc dword [rip+0x10]; mov eax, [rbx+8] (not RIP-relative)
        let code = [
            0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, 0xff, 0x05, 0x10, 0x00, 0x00, 0x00, 0x8b,
            0x43, 0x08,
        ];
        let operands = rip_relative_operands(&code, 0x1000).unwrap();
        assert_eq!(
            operands,
            [
                RipOperand {
                    address: 0x1107,
                    access: Access::Address
                },
                RipOperand {
                    address: 0x101d,
                    access: Access::Bytes(4)
                },
            ]
        );
        assert!(rip_relative_operands(&[0x48, 0x8b], 0x1000).is_err());
    }
}
