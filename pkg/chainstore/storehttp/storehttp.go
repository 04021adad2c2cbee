// Package storehttp serves blocks and receipts from a chainstore.Store over
// HTTP: the read API the engine and the block manager share.
package storehttp

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/service"
)

// Handlers serve one store.
type Handlers struct {
	Store *chainstore.Store
}

// Register routes GET /api/v1/blocks/latest, /api/v1/blocks/{height},
// /api/v1/blocks/hash/{hash} and /api/v1/blocks/checkpoint/{height} on srv.
func (h Handlers) Register(srv *service.Server) {
	srv.Handle("GET /api/v1/blocks/latest", h.Latest)
	srv.Handle("GET /api/v1/blocks/{height}", h.ByHeight)
	srv.Handle("GET /api/v1/blocks/hash/{hash}", h.ByHash)
	srv.Handle("GET /api/v1/blocks/checkpoint/{height}", h.Checkpoint)
}

// writeBlock sends the block at height as it is stored: its canonical
// JSON, verified when it was stored. Decoding it (a block is up to
// 32 MiB) and encoding it again would cost every reader far more than
// what a request is charged.
func (h Handlers) writeBlock(w http.ResponseWriter, height uint64, what string) error {
	raw, err := h.Store.RawBlock(height)
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block %s", what)
	}
	if err != nil {
		return err
	}
	service.WriteJSONBytes(w, http.StatusOK, raw)
	return nil
}

// Latest serves the newest block.
func (h Handlers) Latest(w http.ResponseWriter, _ *http.Request) error {
	height := h.Store.Height()
	if height == 0 {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block yet")
	}
	return h.writeBlock(w, height, "latest")
}

// ByHeight serves the block at {height}.
func (h Handlers) ByHeight(w http.ResponseWriter, r *http.Request) error {
	height, err := parseHeight(r)
	if err != nil {
		return err
	}
	return h.writeBlock(w, height, "at height "+r.PathValue("height"))
}

// ByHash serves the block with {hash}.
func (h Handlers) ByHash(w http.ResponseWriter, r *http.Request) error {
	height, err := h.Store.HeightOf(r.PathValue("hash"))
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block with hash %s", r.PathValue("hash"))
	}
	if err != nil {
		return err
	}
	return h.writeBlock(w, height, "with hash "+r.PathValue("hash"))
}

// Checkpoint serves the signed checkpoint of the block at {height}, as
// text: the block's header, which a receipt of it carries, without its
// transactions.
func (h Handlers) Checkpoint(w http.ResponseWriter, r *http.Request) error {
	height, err := parseHeight(r)
	if err != nil {
		return err
	}
	cp, err := h.Store.Checkpoint(height)
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block at height %s", r.PathValue("height"))
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err = w.Write(cp)
	return err
}

func parseHeight(r *http.Request) (uint64, error) {
	height, err := strconv.ParseUint(r.PathValue("height"), 10, 64)
	if err != nil || height == 0 {
		return 0, service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "height must be a positive whole number")
	}
	return height, nil
}

// Receipt serves the receipt of transaction {id} as text.
func (h Handlers) Receipt(w http.ResponseWriter, r *http.Request) error {
	rc, err := h.Store.Receipt(r.PathValue("id"))
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "transaction %s is not sealed", r.PathValue("id"))
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err = w.Write(rc.Marshal())
	return err
}
