package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/seed53641549/cnm/errdefs"
)

// The ESP transform every key is for.
const (
	// AEAD is the xfrm name of the ESP AEAD algorithm: AES-GCM as RFC 4106
	// uses it in ESP.
	AEAD = "rfc4106(gcm(aes))"
	// KeySize is the length in bytes of [Key.Material]: a 16-byte AES-128
	// key followed by a 4-byte salt, the form xfrm takes for [AEAD].
	KeySize = 16 + 4
	// ICVBits is the length of the integrity check value in bits.
	ICVBits = 128
	// MinSPI is the lowest SPI handed out: 1 to 255 are reserved (RFC 4303).
	MinSPI = 256
)

// recordVersion is the version of the record layout this code writes and
// reads.
const recordVersion = 1

// Key is one key of a [Set]. Its material is not printed: String and every
// fmt verb show the other fields and "material redacted"; JSON encoding
// leaves it out.
type Key struct {
	// Generation numbers the keys of a network from 1, one more for each
	// key made.
	Generation uint64
	// SPI is the ESP security parameter index of the key: at least
	// [MinSPI], unique within its set.
	SPI uint32
	// Created is when the key was made, by the clock of the host that made
	// it.
	Created time.Time

	// material returns the key material. It is a func, not the bytes,
	// because fmt prints a func as an address with every verb and at any
	// depth: a Key printed where fmt cannot call its Format (in an
	// unexported field of another value) shows no material either.
	material func() []byte
}

// secret returns a Key's material func for b.
func secret(b []byte) func() []byte { return func() []byte { return b } }

// Material returns a copy of the key material: [KeySize] bytes, the AES key
// then the salt. Keep it out of logs and errors.
func (k Key) Material() []byte {
	if k.material == nil {
		return nil
	}
	return bytes.Clone(k.material())
}

// String describes the key without its material.
func (k Key) String() string {
	return fmt.Sprintf("key generation %d spi %#08x created %s (material redacted)",
		k.Generation, k.SPI, k.Created.UTC().Format(time.RFC3339Nano))
}

// Format prints [Key.String] for every verb, so that no verb (%x, %#v, ...)
// prints the material.
func (k Key) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(k.String())) }

// Set is the key set of one network.
type Set struct {
	// NetworkID is the network the set belongs to.
	NetworkID string
	// Keys are the set's keys in generation order, oldest first; the
	// newest is the next primary.
	Keys []Key
	// Primary is the generation of the key to encrypt with: the second
	// newest. Every key of Keys is accepted on receive.
	Primary uint64
	// Revision is the store revision of the record the set was read from
	// or written as; a later version of the set has a higher one.
	Revision uint64
}

// PrimaryKey returns the key to encrypt with, or the zero Key for the zero
// Set.
func (s Set) PrimaryKey() Key {
	for _, k := range s.Keys {
		if k.Generation == s.Primary {
			return k
		}
	}
	return Key{}
}

// Rotated returns when the set was last rotated (or created): the time its
// newest key was made.
func (s Set) Rotated() time.Time {
	if len(s.Keys) == 0 {
		return time.Time{}
	}
	return s.Keys[len(s.Keys)-1].Created
}

// String describes the set without key material.
func (s Set) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "key set of network %s at revision %d: primary generation %d; ", s.NetworkID, s.Revision, s.Primary)
	for i, k := range s.Keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "generation %d spi %#08x created %s", k.Generation, k.SPI, k.Created.UTC().Format(time.RFC3339Nano))
	}
	b.WriteString(" (material redacted)")
	return b.String()
}

// Format prints [Set.String] for every verb, so that no verb prints key
// material.
func (s Set) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(s.String())) }

// record is the value of a network's key: the layout of the package doc.
type record struct {
	Version int         `json:"version"`
	Primary uint64      `json:"primary"`
	Keys    []keyRecord `json:"keys"`
}

type keyRecord struct {
	Generation uint64    `json:"generation"`
	SPI        uint32    `json:"spi"`
	Material   []byte    `json:"material"`
	Created    time.Time `json:"created"`
}

// encode returns the record of s.
func encode(s Set) []byte {
	rec := record{Version: recordVersion, Primary: s.Primary, Keys: make([]keyRecord, len(s.Keys))}
	for i, k := range s.Keys {
		rec.Keys[i] = keyRecord{Generation: k.Generation, SPI: k.SPI, Material: k.material(), Created: k.Created.UTC()}
	}
	b, err := json.Marshal(rec)
	if err != nil { // only plain fields: cannot happen
		panic("keys: encode a key set: " + err.Error())
	}
	return b
}

// decode reads the record value of network id's key set at revision rev.
// Its errors name the field and value at fault, never key material.
func decode(id string, value []byte, rev uint64) (Set, error) {
	bad := func(sentinel error, format string, args ...any) (Set, error) {
		return Set{}, fmt.Errorf("%w: record %s at revision %d: %s",
			sentinel, Prefix+id, rev, fmt.Sprintf(format, args...))
	}
	var rec record
	if err := json.Unmarshal(value, &rec); err != nil {
		// A syntax error quotes a character of the value, which may be
		// one of the material's: give only where it is.
		if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
			return bad(errdefs.ErrInvalid, "malformed JSON at byte %d", se.Offset)
		}
		return bad(errdefs.ErrInvalid, "%v", err)
	}
	switch {
	case rec.Version > recordVersion:
		return bad(errdefs.ErrNotSupported, "version %d: this cnm reads version %d", rec.Version, recordVersion)
	case rec.Version != recordVersion:
		return bad(errdefs.ErrInvalid, "version %d: want %d", rec.Version, recordVersion)
	case len(rec.Keys) < 2:
		return bad(errdefs.ErrInvalid, "keys: %d keys: want at least 2 (the primary and the next)", len(rec.Keys))
	}
	s := Set{NetworkID: id, Primary: rec.Primary, Revision: rev, Keys: make([]Key, len(rec.Keys))}
	spis := make(map[uint32]bool, len(rec.Keys))
	for i, kr := range rec.Keys {
		switch {
		case kr.Generation == 0:
			return bad(errdefs.ErrInvalid, "keys[%d].generation: 0: generations start at 1", i)
		case i > 0 && kr.Generation != rec.Keys[i-1].Generation+1:
			return bad(errdefs.ErrInvalid, "keys[%d].generation: %d: follows %d", i, kr.Generation, rec.Keys[i-1].Generation)
		case kr.SPI < MinSPI:
			return bad(errdefs.ErrInvalid, "keys[%d].spi: %d: below %d (reserved)", i, kr.SPI, MinSPI)
		case spis[kr.SPI]:
			return bad(errdefs.ErrInvalid, "keys[%d].spi: %#08x: used by an earlier key", i, kr.SPI)
		case len(kr.Material) != KeySize:
			return bad(errdefs.ErrInvalid, "keys[%d].material: %d bytes: want %d", i, len(kr.Material), KeySize)
		case kr.Created.IsZero():
			return bad(errdefs.ErrInvalid, "keys[%d].created: missing", i)
		}
		spis[kr.SPI] = true
		s.Keys[i] = Key{Generation: kr.Generation, SPI: kr.SPI, Created: kr.Created, material: secret(kr.Material)}
	}
	if want := rec.Keys[len(rec.Keys)-1].Generation - 1; rec.Primary != want {
		return bad(errdefs.ErrInvalid, "primary: %d: want %d (the second newest generation)", rec.Primary, want)
	}
	return s, nil
}
