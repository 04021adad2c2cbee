package core

// Ledger keeps balances. Payment processing lives elsewhere.

import (
	"fmt"

	"example.com/fixture/blockchain/internal/settle"
)

// The next line is reviewed: tron appears in a test vector. TRON_ISOLATION_VERIFIED
var TRON_API_KEY = ""

func Close() { fmt.Println(settle.Done()) }
