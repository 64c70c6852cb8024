// The accuracy benchmark's Thrift service: one call per root request.
service Work {
    string work(1: string rid)
}
