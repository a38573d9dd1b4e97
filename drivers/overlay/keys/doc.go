// Package keys distributes and rotates the encryption keys of encrypted
// overlay networks through the global store (etcd), so that every host of
// a network encrypts and decrypts its VXLAN traffic with the same ESP keys.
// It holds no kernel state: the data path (xfrm states and policies per
// peer) is built from the sets it delivers.
//
// # Key sets
//
// Each encrypted network has one key [Set] in the store, at [Prefix] +
// network ID, written without a lease: it belongs to the network, not to a
// host, and lives until [Ring.Delete]. A set holds consecutive generations
// of keys (1, 2, ...), oldest first, each with its own SPI and key
// material, and names one generation as primary:
//
//   - the primary key is the one every host encrypts with;
//   - every key of the set is accepted on receive;
//   - the newest key is the next primary. It is handed out one rotation
//     period before any host encrypts with it, so that by then every host
//     has installed it for receive;
//   - the keys older than the primary are former primaries, kept so that a
//     host that switches later than its peers is still understood.
//
// So a set of Keep 3 (the default) holds the previous, the current and the
// next key, as Docker swarm's key manager hands them to libnetwork (whose
// primary is the second newest of three). [Ring.Create] makes generations
// 1 (primary) and 2 (next); each [Ring.Rotate] makes the next key primary,
// adds a new next key and drops the oldest beyond Keep. Hosts switch to a
// new primary when their watch ([Ring.Watch]) delivers it, at slightly
// different moments, without losing traffic either way.
//
// Every write is a compare and swap on the record: a set is created only
// where none exists, and a rotation only applies to the revision it read,
// so when several hosts create or rotate at once exactly one of them
// writes and the others return what it wrote. Any number of hosts may run
// [Ring.RunRotation].
//
// # What the data path uses
//
// Keys are for ESP with the AEAD algorithm [AEAD] (AES-GCM, RFC 4106), a 128-bit
// AES key: [Key.Material] is [KeySize] bytes, the AES key followed by the
// 4-byte salt, as the kernel's xfrm takes it, with an ICV of [ICVBits]. An
// SPI is at least 256 (1 to 255 are reserved by RFC 4303) and unique
// within its set; SPIs of different networks may coincide, so a data path
// that needs SPIs unique per pair of hosts derives its own from them.
//
// # Record layout
//
// The value at overlay/keys/<network id> is JSON:
//
//	{"version": 1, "primary": 6, "keys": [
//	  {"generation": 5, "spi": 2882400018, "material": "<base64, 20 bytes>", "created": "2025-01-02T03:04:05.123456789Z"},
//	  {"generation": 6, ...}, {"generation": 7, ...}]}
//
// keys are in generation order and consecutive; primary is the second
// newest generation; created is when the key was made, by the clock of the
// host that made it (so the newest key's time is when the set was last
// rotated). A record of a higher version is refused with
// [errdefs.ErrNotSupported], a malformed one with [errdefs.ErrInvalid].
//
// # Secrecy
//
// The key material is in etcd in plain base64: etcd must be reached over
// TLS with client certificates, and access to it restricted to the hosts.
// Within the process it never appears in text: [Key] and [Set] print
// (String, and every fmt verb) without it, JSON encoding of them leaves it
// out, and no error of this package contains it. [Key.Material] returns a
// copy for the data path.
package keys
