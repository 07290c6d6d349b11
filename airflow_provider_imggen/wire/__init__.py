"""
One module per API surface, each owning its path, its request body and the parsing of its answers, facing
the emulator module of the same name: :mod:`.gateway` (``POST /v1/images/generations``), :mod:`.native`
(DashScope's task API: submission, status, list), :mod:`.multimodal` (DashScope's synchronous endpoint);
:mod:`.errors` decodes every error the three answer. No I/O here: the hooks send.
"""
