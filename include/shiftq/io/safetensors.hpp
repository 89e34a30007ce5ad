// Safetensors files (https://github.com/huggingface/safetensors): the on-disk tensor format of shiftq.
//
// Layout: u64 little-endian header length N | N bytes of JSON header | raw little-endian data.
// Header: {"<name>":{"dtype":"F32","shape":[2,3],"data_offsets":[begin,end]},...,"__metadata__":{...}}
// with offsets relative to the start of the data section, padded with spaces so that N % 8 == 0.
// shiftq writes tensors in sorted-name order, back to back, and reads F32, I32, I8 and U8.
#pragma once

#include <map>
#include <string>

#include "shiftq/core/tensor.hpp"

namespace shiftq::io {

struct TensorFile {
  std::map<std::string, Tensor> tensors;        // f32 "F32", s32 "I32", s8 "I8", u8 "U8"; any rank (incl. [])
  std::map<std::string, std::string> metadata;  // the "__metadata__" string -> string map
};

// Writes `file` atomically: to `path` + ".tmp-<pid>-<counter>" in the same directory, fsync, rename()
// over `path`, fsync of the directory. Throws ValueError (nothing written) for an undefined tensor,
// a tensor named "__metadata__" or a name/metadata string that is not valid UTF-8, NumericError
// naming the tensor for NaN/Inf in f32 data (so that every file written can be read back), and
// IOError naming `path` and the system error when writing fails; on failure the temp file is
// removed and an existing file at `path` is left as it was. (Only if the final fsync of the directory
// fails is the new file already in place; the IOError says so.) The new file gets default permissions.
// After a successful save, temp files `path`.tmp-<pid>-* of processes that no longer exist (saves
// killed mid-write) are removed; those of live processes are left alone.
void save_safetensors(const std::string& path, const TensorFile& file);

// Strict reader. Throws IOError naming `path` and the problem for a missing or unreadable file, a
// truncated file, an absurd header length, malformed JSON, an unsupported dtype, a shape that does not
// match its offsets, offsets that overlap, leave gaps or do not cover the data section exactly,
// duplicate keys and negative dims; NumericError naming the tensor for NaN/Inf in F32 data.
// Sizes are validated against the file size before anything is allocated.
TensorFile load_safetensors(const std::string& path);

}  // namespace shiftq::io
