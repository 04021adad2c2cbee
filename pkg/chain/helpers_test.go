package chain_test

import "golang.org/x/mod/sumdb/note"

func noteSigner(skey string) (note.Signer, error) { return note.NewSigner(skey) }
