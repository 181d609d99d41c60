//! CPU kernels for control flow (If, Loop, Scan), sequences and optionals.
//!
//! Subgraphs run through [`crate::KernelCtx::run_subgraph`], which resolves the values a
//! body captures from enclosing scopes; the kernels here only bind the positional inputs.

mod branch;
mod loops;
mod optional;
mod sequence;
mod tensors;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "If" => branch::if_op,
        "Loop" => loops::loop_op,
        "Scan" => loops::scan_op,
        "SequenceEmpty" => sequence::sequence_empty,
        "SequenceConstruct" => sequence::sequence_construct,
        "SequenceInsert" => sequence::sequence_insert,
        "SequenceErase" => sequence::sequence_erase,
        "SequenceAt" => sequence::sequence_at,
        "SequenceLength" => sequence::sequence_length,
        "SplitToSequence" => sequence::split_to_sequence,
        "ConcatFromSequence" => sequence::concat_from_sequence,
        "SequenceMap" => sequence::sequence_map,
        "Optional" => optional::optional,
        "OptionalHasElement" => optional::optional_has_element,
        "OptionalGetElement" => optional::optional_get_element,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
