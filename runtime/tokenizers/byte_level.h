// GPT-2's byte-level alphabet: every byte maps to one printable character (space → 'Ġ'), so
// any UTF-8 text is a string over 256 symbols; and GPT-2's pre-tokenization regex.
#pragma once

#include <string>
#include <string_view>

#include "runtime/tokenizers/regex.h"

namespace tessera::tokenizers {

// out = the bytes of `in`, each replaced by its character (out is overwritten).
void bytes_to_unicode(std::string_view in, std::string& out);
// Appends the bytes a byte-level token stands for; false (nothing appended) when some character
// of `token` is outside the alphabet (the crate then keeps the token's own bytes).
bool unicode_to_bytes(std::string_view token, std::string& out);
// The byte's character as UTF-8 (1 or 2 bytes).
std::string_view byte_char(unsigned char b);

const Regex& gpt2_regex();

}  // namespace tessera::tokenizers
