package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// DecodeJSON reads a JSON request body of at most limit bytes into v,
// strictly: unknown fields, trailing data and oversize bodies are client
// errors (400 or 413) with a message that says which.
func DecodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, limit)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return jsonError(err, limit)
		}
		return Errorf(http.StatusBadRequest, CodeBadRequest, "unexpected data after the JSON value")
	}
	return nil
}

func jsonError(err error, limit int64) error {
	var tooBig *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		return Errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "request body is larger than %d bytes", limit)
	case errors.As(err, &syntax):
		return Errorf(http.StatusBadRequest, CodeBadRequest, "malformed JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(document)"
		}
		he := Errorf(http.StatusBadRequest, CodeBadRequest, "wrong type for %s: want %s", field, typ.Type)
		he.Fields = []map[string]string{{"field": field, "message": fmt.Sprintf("must be %s", typ.Type)}}
		return he
	case errors.Is(err, io.EOF):
		return Errorf(http.StatusBadRequest, CodeBadRequest, "empty body; a JSON document is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(http.StatusBadRequest, CodeBadRequest, "truncated JSON")
	}
	return Errorf(http.StatusBadRequest, CodeBadRequest, "invalid JSON: %v", err)
}
