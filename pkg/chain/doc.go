// Package chain defines the formats of Lucid's permissioned chain: canonical
// JSON transactions (RFC 8785) with SHA-256 ids, block headers signed as
// C2SP signed notes whose body is a tlog checkpoint, blocks, and anchor
// receipts in the C2SP tlog-proof layout that verify offline.
//
// All transactions ever sealed form one append-only RFC 6962 Merkle log (see
// pkg/logtree); a block header commits to the log's size and root after the
// block, to the previous header's hash and to the block's slot time. Hash
// links plus consistency proofs between checkpoints make tampering and forks
// detectable by anyone holding a validator's public key.
//
// Every decoder here is strict: input that decodes must re-encode to the
// same bytes, so one value has one encoding and one id.
package chain
