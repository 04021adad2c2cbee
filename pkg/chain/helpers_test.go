package chain_test

import (
	"bytes"
	"encoding/json"

	"golang.org/x/mod/sumdb/note"
)

func noteSigner(skey string) (note.Signer, error) { return note.NewSigner(skey) }

func compact(dst *bytes.Buffer, src []byte) error { return json.Compact(dst, src) }
