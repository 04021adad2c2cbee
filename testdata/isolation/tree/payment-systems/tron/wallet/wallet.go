package wallet

// Name is the wallet's name; the blockchain core must never import this.
func Name() string { return "tron-wallet" }
