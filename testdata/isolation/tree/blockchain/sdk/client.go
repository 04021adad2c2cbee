package sdk

import (
	gotron "github.com/fbsobreira/gotron-sdk/pkg/client"
)

var _ = gotron.NewGrpcClient
