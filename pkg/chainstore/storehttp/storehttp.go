// Package storehttp serves blocks and receipts from a chainstore.Store over
// HTTP: the read API the engine and the block manager share.
package storehttp

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/service"
)

// Handlers serve one store.
type Handlers struct {
	Store *chainstore.Store
}

// Register routes GET /api/v1/blocks/latest, /api/v1/blocks/{height} and
// /api/v1/blocks/hash/{hash} on srv.
func (h Handlers) Register(srv *service.Server) {
	srv.Handle("GET /api/v1/blocks/latest", h.Latest)
	srv.Handle("GET /api/v1/blocks/{height}", h.ByHeight)
	srv.Handle("GET /api/v1/blocks/hash/{hash}", h.ByHash)
}

func writeBlock(w http.ResponseWriter, b *chain.Block, err error, what string) error {
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block %s", what)
	}
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, b)
	return nil
}

// Latest serves the newest block.
func (h Handlers) Latest(w http.ResponseWriter, _ *http.Request) error {
	height := h.Store.Height()
	if height == 0 {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no block yet")
	}
	b, err := h.Store.Block(height)
	return writeBlock(w, b, err, "latest")
}

// ByHeight serves the block at {height}.
func (h Handlers) ByHeight(w http.ResponseWriter, r *http.Request) error {
	height, err := strconv.ParseUint(r.PathValue("height"), 10, 64)
	if err != nil || height == 0 {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "height must be a positive whole number")
	}
	b, err := h.Store.Block(height)
	return writeBlock(w, b, err, "at height "+r.PathValue("height"))
}

// ByHash serves the block with {hash}.
func (h Handlers) ByHash(w http.ResponseWriter, r *http.Request) error {
	b, err := h.Store.BlockByHash(r.PathValue("hash"))
	return writeBlock(w, b, err, "with hash "+r.PathValue("hash"))
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
